"""Opening a store whose schema is current reads one version and does not load Alembic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from maillink.store import Store, _newest_in_files


def test_the_newest_revision_is_named_by_the_newest_migration_file() -> None:
    assert _newest_in_files() == Store.newest_schema_version()


def test_a_current_store_opens_without_loading_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'current.db'}"
    Store.open(url).close()
    script = (
        "import sys\n"
        "from maillink.store import Store\n"
        f"Store.open({url!r}).close()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako'}))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert shown.strip() == "[]"


def test_a_new_store_is_migrated_to_the_newest_revision(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        assert store.schema_version() == _newest_in_files()
    finally:
        store.close()
