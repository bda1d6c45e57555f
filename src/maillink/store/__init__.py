"""The state store: one relational database through one SQLAlchemy Core schema.

SQLite by default (a file, nothing to install), PostgreSQL when several daemons share the work.
`Store.open(url)` creates or upgrades the schema in place (Alembic migrations shipped in the package).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from maillink.errors import ConfigError

MIGRATIONS = Path(__file__).with_name("migrations")


def _engine_for(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            "[store] url is not a database URL (e.g. sqlite:///maillink.db)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None:
            raise ConfigError(
                "[store] url names PostgreSQL but psycopg is not installed: "
                "pip install 'maillink[postgres]'"
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not Path(database).parent.exists():
            raise ConfigError(f"[store] url: the folder of {database!r} does not exist")
        engine = create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # No ping per checkout (a round trip per transaction): a connection the server dropped fails
    # its statement, is discarded by the pool, and the caller's error handling retries (a round
    # that lost its connection runs again at once, `daemon.rounds.is_conflict`); connections are
    # recycled before common idle timeouts close them.
    return create_engine(parsed, pool_recycle=1800)


def _alembic_config(connection: Connection | None = None) -> Any:
    # Alembic (with Mako) costs about a third of a second to import: only when migrating.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _newest_in_files() -> str:
    """The newest revision, from the migration files' names (`NNNN_what.py`, one chain)."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


class Store:
    """Owns the engine; every query module takes the `Connection` of a `transaction()`."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Store:
        store = cls(_engine_for(url))
        if upgrade:
            store.upgrade()
        return store

    def upgrade(self) -> None:
        """Bring the schema to the newest version, in place; a no-op when it is current (one
        read of the version, without loading Alembic)."""
        try:
            if self._recorded_version() == _newest_in_files():
                return
            from alembic import command

            with self.engine.begin() as connection:
                command.upgrade(_alembic_config(connection), "head")
        except OperationalError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            raise ConfigError(
                f"[store] url: cannot open the database {where}: {exc.orig}"
            ) from None

    def _recorded_version(self) -> str | None:
        """The version the database records; None for a database without maillink's tables."""
        try:
            with self.engine.connect() as connection:
                return connection.execute(
                    text("SELECT version_num FROM alembic_version")
                ).scalar_one_or_none()
        except DBAPIError:  # no such table, or no database: Alembic tells which
            return None

    def schema_version(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def newest_schema_version() -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(_alembic_config()).get_current_head()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def rolled_back(self) -> Iterator[Connection]:
        """A transaction that is always rolled back (dry runs)."""
        with self.engine.connect() as connection:
            transaction = connection.begin()
            try:
                yield connection
            finally:
                transaction.rollback()

    def ping(self) -> None:
        """Reach the database once (health checks); SQLAlchemyError when it is unreachable."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
