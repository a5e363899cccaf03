"""Opening the store: URL resolution, engine set-up and Alembic migrations."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from collectors.paths import data_dir

MIGRATIONS = Path(__file__).with_name("migrations")


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says why and what to try."""


def default_db_url() -> str:
    """SQLite file under the XDG data directory (``$XDG_DATA_HOME/hwnas/hwnas.sqlite``)."""
    return f"sqlite:///{data_dir() / 'hwnas.sqlite'}"


def resolve_db_url(url: str | None = None) -> str:
    """``--db`` wins, then ``HWNAS_DB``, then the default SQLite file."""
    return url or os.environ.get("HWNAS_DB") or default_db_url()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL keeps the file readable if a writer is killed mid-transaction; busy_timeout lets
    # a reader and a collector share the file.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _finite(value):
    """``value`` with every non-finite float as None: JSON, PostgreSQL's included, has no NaN
    or infinity (a metric of a one-row split is NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_serializer(doc) -> str:
    """How every JSON column is written, on every backend."""
    return json.dumps(_finite(doc))


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"--db: cannot parse database URL {url!r} "
                         "(expected e.g. sqlite:///path.sqlite or postgresql://host/db)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, json_serializer=_json_serializer)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        return create_engine(parsed, pool_pre_ping=True, json_serializer=_json_serializer,
                             connect_args={"connect_timeout": 5} if backend == "postgresql"
                             else {})
    except Exception as exc:  # unknown dialect or missing driver
        raise StoreError(f"--db: cannot use database URL {parsed.render_as_string()!r}: "
                         f"{exc}") from None


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Create or upgrade the schema to the newest Alembic revision."""
    from alembic import command

    with engine.begin() as conn:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """A connected, migrated store; ``store.session()`` gives an ORM session."""

    def __init__(self, url: str | None = None, migrate: bool = True):
        self.url = resolve_db_url(url)
        self.engine = make_engine(self.url)
        try:
            with self.engine.connect():
                pass
            if migrate:
                upgrade(self.engine)
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreError(f"--db: cannot connect to {self.display_url}: {reason}") from None
        except SQLAlchemyError as exc:
            raise StoreError(f"--db: store {self.display_url} is not usable: {exc}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def session(self) -> Session:
        return self._sessions()

    def tables(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def close(self) -> None:
        self.engine.dispose()
