"""The repository stands on its own, and its docs stay true to the code.

Nothing in the repository points outside it (a design page or reference files beside the clone);
every relative link of the README and docs/ leads to a file (and heading) that exists; every
command and option of the CLI is in docs/cli.md, every key of maillink.toml in
docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from maillink import config
from maillink.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Written in pieces so that this file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        [
            r"\.\./" + "shared",
            "shared/" + "reference",
            r"\b" + "DES" + r"IGN(\.md)?\b",
            "CONVENTIONS" + r"\.md",
        ]
    )
)
TEXT_SUFFIXES = {".py", ".md", ".toml", ".json", ".html", ".txt", ".cfg", ".ini", ".mako", ".css"}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "results"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _repository_texts() -> Iterator[Path]:
    yield from (ROOT / name for name in ("README.md", "pyproject.toml"))
    yield from ROOT.glob("*.example.*")
    for folder in ("src", "tests", "bench", "docs", "tools"):
        for path in sorted((ROOT / folder).rglob("*")):
            if (
                path.is_file()
                and path.suffix in TEXT_SUFFIXES
                and not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts)
                and not any(part.endswith(".egg-info") for part in path.parts)
            ):
                yield path


def _markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "tests/reference/README.md"]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#+\s+(.*?)\s*$", page.read_text(encoding="utf-8"), re.MULTILINE)
    return {_slug(heading) for heading in headings}


def test_nothing_refers_to_files_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}"
        for path in _repository_texts()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == [], "\n".join(found)


def test_the_openapi_specs_the_tests_use_are_in_the_repository() -> None:
    import openapi_check

    folder = openapi_check.REFERENCE_DIR
    assert folder.is_relative_to(ROOT)
    for name in openapi_check.SPEC_FILES.values():
        assert (folder / name).is_file(), name


@pytest.mark.parametrize("page", _markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings_that_exist(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif not linked.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert broken == [], broken


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def _section(text: str, path: tuple[str, ...]) -> str:
    """The part of cli.md under the most specific heading that names `maillink <path>`."""
    for length in range(len(path), 0, -1):
        wanted = "`maillink " + " ".join(path[:length])
        match = re.search(
            rf"^(#+) [^\n]*{re.escape(wanted)}[`\s|][^\n]*\n(.*?)(?=^#{{1,3}} |\Z)",
            text,
            re.MULTILINE | re.DOTALL,
        )
        if match:
            return match.group(0)
    return ""


def test_cli_md_names_every_command_and_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = [
        f"--{option}"
        for option in ("config", "debug", "version", "help")
        if f"`--{option}" not in text
    ]
    for path, command in _commands(cli):
        section = _section(text, path)
        full = "maillink " + " ".join(path)
        if full not in section:
            missing.append(full)
            continue
        for param in command.params:
            for option in param.opts if isinstance(param, click.Option) else ():
                if option.startswith("--") and option != "--help" and option not in section:
                    missing.append(f"{full} {option}")
    assert missing == [], missing


SECTIONS = {
    "store": None,
    "crm": config.CrmSettings,
    "gmail": config.GmailSettings,
    "microsoft": config.MicrosoftSettings,
    "linking": config.LinkingSettings,
    "sync": config.SyncSettings,
    "cache": config.CacheSettings,
    "daemon": config.DaemonSettings,
    "web": config.WebAppSettings,
}


def test_configuration_md_names_every_key_of_maillink_toml() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert set(SECTIONS) == set(config._SECTIONS), "a new [section]: add it here and in the docs"
    missing = []
    for name, settings in SECTIONS.items():
        match = re.search(
            rf"^### `\[{name}\]`\n(.*?)(?=^#{{1,3}} |\Z)", text, re.MULTILINE | re.DOTALL
        )
        if match is None:
            missing.append(f"[{name}]")
            continue
        keys = ["url"] if settings is None else [f.name for f in dataclasses.fields(settings)]
        missing += [f"[{name}] {key}" for key in keys if f"| `{key}` |" not in match.group(1)]
    assert missing == [], missing
