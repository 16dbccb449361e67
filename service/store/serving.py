"""Serving state in PostgreSQL: the served model (one row, a generation per change) and the
replicas with what each serves and has acknowledged. Reconcilers and gateways read it; the
workflow's apply step writes the served model and waits on the acknowledgements."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

SERVED_CHANNEL = "lethe_served"
ROUTING_CHANNEL = "lethe_routing"


@dataclass(frozen=True)
class Served:
    generation: int
    adapter_path: str | None  # None: the base model (every shard dead)
    adapter_sha256: str | None
    aggregation: str

    @property
    def name(self) -> str | None:
        """The served model's name on replicas: new for every generation, so a name is never reused."""
        return f"lethe-g{self.generation}-{self.adapter_sha256[:12]}" if self.adapter_sha256 else None

    def names(self, keys: list[str]) -> list[str]:
        """Adapter names for the served parts (``""``: a lone adapter; ``"s<k>"``: shard k of a routing table)."""
        assert self.name is not None
        return [f"{self.name}-{k}" if k else self.name for k in keys]


@dataclass(frozen=True)
class Replica:
    id: str
    url: str
    routable: bool
    serving_names: tuple[str, ...]  # what the gateway sends "lethe" requests to (empty: the base model)
    serving_sha256: str | None
    acked_generation: int | None
    note: str | None


def served(conn: psycopg.Connection) -> Served | None:
    row = conn.execute("SELECT generation, adapter_path, adapter_sha256, aggregation FROM served_model").fetchone()
    return Served(*row) if row else None


def publish(
    conn: psycopg.Connection, path: str | None, sha256: str | None, aggregation: str, request_id: object
) -> Served:
    """Make ``path`` the served model. Same content as now: the generation stays (idempotent)."""
    cur = served(conn)
    if cur is not None and cur.adapter_sha256 == sha256 and cur.adapter_path == path:
        return cur
    row = conn.execute(
        """INSERT INTO served_model (generation, adapter_path, adapter_sha256, aggregation, request_id)
           VALUES (1, %s, %s, %s, %s)
           ON CONFLICT (id) DO UPDATE SET generation = served_model.generation + 1,
               adapter_path = EXCLUDED.adapter_path, adapter_sha256 = EXCLUDED.adapter_sha256,
               aggregation = EXCLUDED.aggregation, request_id = EXCLUDED.request_id, updated_at = now()
           RETURNING generation""",
        (path, sha256, aggregation, request_id),
    ).fetchone()
    assert row is not None
    return Served(row[0], path, sha256, aggregation)


_REPLICA = "id, url, routable, serving_names, serving_sha256, acked_generation, note"


def replicas(conn: psycopg.Connection) -> list[Replica]:
    rows = conn.execute(f"SELECT {_REPLICA} FROM replicas ORDER BY id")
    return [Replica(r[0], r[1], r[2], tuple(r[3]), *r[4:]) for r in rows]


def register(conn: psycopg.Connection, replica_id: str, url: str) -> None:
    """A (re)started replica: not routable until it acknowledges the current generation."""
    conn.execute(
        """INSERT INTO replicas (id, url, note) VALUES (%s, %s, 'starting')
           ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, routable = false, serving_names = '{}',
               serving_sha256 = NULL, acked_generation = NULL, note = 'restarted', heartbeat_at = now()""",
        (replica_id, url),
    )


def route(conn: psycopg.Connection, replica_id: str, names: list[str], sha256: str | None) -> None:
    """Switch the gateway's routing for this replica to ``names`` (already loaded there)."""
    conn.execute(
        "UPDATE replicas SET serving_names = %s, serving_sha256 = %s, heartbeat_at = now() WHERE id = %s",
        (names, sha256, replica_id),
    )


def acknowledge(conn: psycopg.Connection, replica_id: str, generation: int) -> bool:
    """The replica serves ``generation`` and nothing older: routable again if that is still current."""
    row = conn.execute(
        """UPDATE replicas SET acked_generation = %s, acked_at = now(), heartbeat_at = now(),
               routable = (%s = (SELECT generation FROM served_model)),
               note = CASE WHEN %s = (SELECT generation FROM served_model) THEN NULL ELSE 'behind' END
           WHERE id = %s RETURNING routable""",
        (generation, generation, generation, replica_id),
    ).fetchone()
    return bool(row and row[0])


def heartbeat(conn: psycopg.Connection, replica_id: str) -> None:
    conn.execute("UPDATE replicas SET heartbeat_at = now() WHERE id = %s", (replica_id,))


def unroutable(conn: psycopg.Connection, replica_id: str, note: str) -> None:
    conn.execute("UPDATE replicas SET routable = false, note = %s WHERE id = %s", (note, replica_id))


def lagging(conn: psycopg.Connection, generation: int) -> list[str]:
    """Routable replicas that have not acknowledged ``generation`` yet (may serve older weights)."""
    rows = conn.execute(
        "SELECT id FROM replicas WHERE routable AND coalesce(acked_generation, 0) < %s ORDER BY id", (generation,)
    )
    return [r[0] for r in rows]


def remove_lagging(conn: psycopg.Connection, generation: int, note: str, *, keep_one: bool = True) -> list[str]:
    """Take every replica still behind ``generation`` out of routing (atomically with the check).
    ``keep_one``: only if a routable replica serves ``generation``, so routing never goes empty (a
    slow rollout must not become an outage); otherwise nothing is removed."""
    with conn.transaction():
        rows = conn.execute(
            "SELECT routable, coalesce(acked_generation, 0) >= %s FROM replicas ORDER BY id FOR UPDATE", (generation,)
        ).fetchall()
        if keep_one and not any(routable and current for routable, current in rows):
            return []
        gone = conn.execute(
            "UPDATE replicas SET routable = false, note = %s WHERE routable AND coalesce(acked_generation, 0) < %s"
            " RETURNING id",
            (note, generation),
        )
        return sorted(r[0] for r in gone)


@contextlib.contextmanager
def listening(url: str, channel: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection listening on ``channel`` (``SERVED_CHANNEL``, ``ROUTING_CHANNEL``):
    wait on it with ``conn.notifies(timeout=..., stop_after=1)``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {channel}")
        yield conn


ROLLOUT_LOCK = 0x1E7E_5E27  # one served model, one rollout at a time (a PostgreSQL advisory lock)
APPLY_LOCK = 0x1E7E_A991  # deletions: claim → cut → rollout, one batch at a time


@contextlib.contextmanager
def advisory_lock(url: str, key: int) -> Iterator[None]:
    """A session advisory lock held on a connection of its own (what runs under it commits as it
    goes); a killed holder's connection drops and the lock with it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


@contextlib.contextmanager
def advisory_locks_if_free(url: str, keys: list[int]) -> Iterator[set[int]]:
    """Those of ``keys`` no one holds now, locked on one connection of their own: never waits."""
    with psycopg.connect(url, autocommit=True) as conn:
        got = set[int]()
        try:
            for key in keys:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if row and row[0]:
                    got.add(key)
            yield got
        finally:
            for key in got:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def rollout_lock(url: str) -> contextlib.AbstractContextManager[None]:
    """Held for a whole rollout."""
    return advisory_lock(url, ROLLOUT_LOCK)


@contextlib.contextmanager
def rollout_lock_if_free(url: str) -> Iterator[bool]:
    """The rollout lock if no one holds it now (True), else nothing (False): never waits."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ROLLOUT_LOCK,)).fetchone()
        got = bool(row and row[0])
        try:
            yield got
        finally:
            if got:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ROLLOUT_LOCK,))


def apply_lock(url: str) -> contextlib.AbstractContextManager[None]:
    """Held by a deletion batch from its claim until its rollout is acknowledged: a plan is never
    made stale by another batch's cut before it is served, and requests arriving during a
    rollout are pending when the next batch is claimed (they join it)."""
    return advisory_lock(url, APPLY_LOCK)
