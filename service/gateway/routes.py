"""The gateway's routing: routable replicas and the adapter names each serves (one, or one per live
shard for a routing table), from PostgreSQL, refreshed on NOTIFY ``lethe_routing`` and by a
periodic resync."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import psycopg

from service.store import serving as store
from service.store.database import DatabaseInfo
from shards.served import pick


@dataclass(frozen=True)
class Target:
    replica_id: str
    url: str
    models: tuple[str, ...]  # names to send upstream: the replica's current adapter(s), or the base model

    def model(self, key: str) -> str:
        """The adapter for a request with routing key ``key`` (the same on every replica)."""
        return pick(self.models, key)


class Routes:
    def __init__(self, db: DatabaseInfo, base_name: str, resync: float = 1.0) -> None:
        self.db, self.base_name, self.resync = db, base_name, resync
        self._targets: list[Target] = []
        self._cycle = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._follow, name="gateway-routes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def refresh(self) -> None:
        with self.db.connect() as conn:
            reps = store.replicas(conn)
        self._targets = [Target(r.id, r.url, r.serving_names or (self.base_name,)) for r in reps if r.routable]

    def targets(self) -> list[Target]:
        """Routable replicas, rotated for round-robin (the caller tries them in this order)."""
        ts = self._targets
        if not ts:
            return []
        k = next(self._cycle) % len(ts)
        return ts[k:] + ts[:k]

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                with store.listening(self.db.url, store.ROUTING_CHANNEL) as conn:
                    while not self._stop.is_set():
                        self.refresh()
                        for _ in conn.notifies(timeout=self.resync, stop_after=1):
                            pass
            except psycopg.Error:
                self._stop.wait(self.resync)
