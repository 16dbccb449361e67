"""One replica's adapter reconciler: make the replica serve the served model's current generation.

Order of a swap (design.md §3): copy the served model into the replica's own directory and check
its content hash → load its adapter (a routing table: every live shard's) under new unique names →
switch the gateway's routing to them → unload every other name and delete their files →
acknowledge the generation. Only then can a deletion
complete, so an acknowledged replica cannot serve superseded weights by any name. Woken by
LISTEN/NOTIFY, with a periodic resync; a replica that restarted empty is loaded again.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import httpx
import psycopg

from service.serving.vllm import VllmAdmin
from service.store import serving as store
from service.store.database import DatabaseInfo
from service.tracing import tracer
from shards import served as served_dir

log = logging.getLogger(__name__)


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the replica's directory shares the artifacts' file system (published
    files are never rewritten, so a link is as good as a copy and costs no write), else a copy
    (a pod's own volume). Either way the content hash is checked after."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Reconciler:
    def __init__(
        self,
        db: DatabaseInfo,
        replica_id: str,
        url: str,
        local_root: Path,
        resync: float = 2.0,
        advertise_url: str | None = None,
    ) -> None:
        """``url``: where this reconciler reaches vLLM (its admin endpoints: localhost in a pod);
        ``advertise_url``: where the gateway reaches it (default ``url``)."""
        self.db, self.replica_id, self.url, self.resync = db, replica_id, url, resync
        self.advertise_url = advertise_url or url
        self.local_root = local_root
        self.admin = VllmAdmin(url)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name=f"reconciler-{self.replica_id}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)
        self.admin.close()

    def run(self) -> None:
        with store.listening(self.db.url, store.SERVED_CHANNEL) as listen:
            with self.db.connect() as conn:
                store.register(conn, self.replica_id, self.advertise_url)
            while not self.stopping.is_set():
                try:
                    self.reconcile_once()
                    self.last_error = None
                except (httpx.HTTPError, OSError, psycopg.Error) as e:
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.warning("replica %s: %s", self.replica_id, self.last_error)
                for _ in listen.notifies(timeout=self.resync, stop_after=1):
                    pass

    def serving_current(self) -> bool:
        """Routable and acknowledged on the current generation (a pod's readiness)."""
        with self.db.connect() as conn:
            want = store.served(conn)
            me = next((r for r in store.replicas(conn) if r.id == self.replica_id), None)
        return want is not None and me is not None and me.routable and me.acked_generation == want.generation

    def reconcile_once(self) -> bool:
        """One pass; True if the replica now serves the current generation (acknowledged)."""
        with self.db.connect() as conn:
            want = store.served(conn)
        if want is None:  # nothing published yet
            return False
        if not self.admin.healthy():
            with self.db.connect() as conn:
                store.unroutable(conn, self.replica_id, "vLLM not healthy")
            return False
        loaded = self.admin.adapters()
        with self.db.connect() as conn:
            me = next((r for r in store.replicas(conn) if r.id == self.replica_id), None)
        if (
            me is not None
            and me.acked_generation == want.generation
            and me.serving_sha256 == want.adapter_sha256
            and loaded == set(me.serving_names)
        ):
            with self.db.connect() as conn:
                store.heartbeat(conn, self.replica_id)
                if not me.routable:
                    store.acknowledge(conn, self.replica_id, want.generation)
            return True
        attrs: dict[str, str | int] = {"lethe.replica": self.replica_id, "lethe.generation": want.generation}
        with tracer.start_as_current_span("serving.swap", attributes=attrs):
            names: list[str] = []
            if want.name is not None:
                assert want.adapter_path is not None and want.adapter_sha256 is not None
                local = self._local_copy(Path(want.adapter_path), want.name, want.adapter_sha256)
                parts = served_dir.parts(local, check=False)  # checked as a whole by the copy
                names = want.names([p.key for p in parts])
                for name, part in zip(names, parts, strict=True):
                    if name not in loaded:
                        self.admin.load(name, part.path)
            with self.db.connect() as conn:
                store.route(conn, self.replica_id, names, want.adapter_sha256)
            for old in sorted(loaded - set(names)):
                self.admin.unload(old)
            self._delete_local(keep=want.name)
            with self.db.connect() as conn:
                return store.acknowledge(conn, self.replica_id, want.generation)

    def _local_copy(self, source: Path, name: str, sha256: str) -> Path:
        """The replica's own copy (in Kubernetes: the sidecar's sync into the pod's volume), checked."""
        dest = self.local_root / name
        self.local_root.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            tmp = self.local_root / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp, copy_function=_link_or_copy)
            tmp.rename(dest)
        try:
            ok = served_dir.served_sha256(dest) == sha256
        except ValueError:  # a routing table's part does not match its manifest
            ok = False
        if not ok:
            shutil.rmtree(dest)
            raise OSError(f"adapter copy for {name} does not match its content hash")
        return dest

    def _delete_local(self, keep: str | None) -> None:
        if not self.local_root.exists():
            return
        for d in self.local_root.iterdir():
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
