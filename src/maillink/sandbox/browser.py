"""Stands in for a rep's browser on the sandboxes' consent pages (the demo, the tests).

It opens the authorization URL the onboarding printed, lets the sandbox auto-consent, and brings
the answer home to the loopback redirect: a 302 redirect (Google) or a self-submitting
`form_post` page (Microsoft).
"""

from __future__ import annotations

import html
import re
import threading

import requests

_FORM = re.compile(r'<form method="POST" name="hiddenform" action="([^"]+)">')
_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)" />')


def consent(url: str, *, verify: str | bool = True, timeout: float = 30) -> None:
    page = requests.get(url, verify=verify, allow_redirects=False, timeout=timeout)
    if page.is_redirect:
        requests.get(page.headers["Location"], timeout=timeout)
        return
    forms = _FORM.findall(page.text)
    if page.status_code != 200 or not forms:
        raise RuntimeError(f"the consent page answered {page.status_code}")
    fields = {html.unescape(k): html.unescape(v) for k, v in _FIELD.findall(page.text)}
    requests.post(html.unescape(forms[0]), data=fields, timeout=timeout).raise_for_status()


class ConsentingBrowser:
    """A text stream for the onboarding's `out`: each printed URL is opened in a thread."""

    def __init__(self, verify: str | bool = True) -> None:
        self.verify = verify
        self.errors: list[BaseException] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("http"):
                self.open(line.strip())
        return len(text)

    def open(self, url: str) -> None:
        """Consent at `url` in a thread (the onboarding's `announce`)."""
        threading.Thread(target=self._open, args=(url,), daemon=True).start()

    def flush(self) -> None:
        return None

    def _open(self, url: str) -> None:
        try:
            consent(url, verify=self.verify)
        except BaseException as exc:  # the onboarding's own timeout reports the failure
            self.errors.append(exc)
