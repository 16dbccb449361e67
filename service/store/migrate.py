"""Apply the numbered plain-SQL migrations in ``migrations/`` with yoyo-migrations."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from yoyo import get_backend, read_migrations

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def yoyo_uri(url: str) -> str:
    """A yoyo URI (psycopg 3 backend) for a libpq URL or conninfo string, Unix sockets included."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    user = quote(str(info.pop("user", "")), safe="")
    password = info.pop("password", None)
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    dbname = quote(str(info.pop("dbname", "")), safe="")
    query = urlencode({k: str(v) for k, v in info.items()})
    return f"postgresql+psycopg://{auth}/{dbname}" + (f"?{query}" if query else "")


def migrate(url: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return the ids applied."""
    backend = get_backend(yoyo_uri(url))
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def applied(url: str) -> list[str]:
    backend = get_backend(yoyo_uri(url))
    return sorted(m.id for m in read_migrations(str(MIGRATIONS_DIR)) if backend.is_applied(m))
