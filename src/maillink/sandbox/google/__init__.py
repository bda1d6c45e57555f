"""The Google stand-in: OAuth 2.0 (installed apps, PKCE) and the Gmail API v1, metadata only.

`sandbox` assembles the server; `oauth`, `gmail` and `batch` hold its routes, `mailbox` the mail
and its history, `errors` the answers in Google's error shape.
"""

from maillink.sandbox.google.sandbox import SCOPE_METADATA, GoogleSandbox

__all__ = ["SCOPE_METADATA", "GoogleSandbox"]
