"""Composition root: the object graph of a process, built once from one Settings object.

``Lethe(settings, db)`` holds the parts every entry point shares (the deletion and knowledge-base
cores, the ledger writer, the API-key cache, the data-key store) and builds the edges from them:
the REST app, the gRPC server, the worker's saga dependencies. ``lethe api`` serves REST and gRPC
from one graph, so both transports call the same core object. The module's functions are the
one-part shortcuts (a CLI command, a test) and build a graph each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from service import keyfile
from service.config import Settings
from service.core.records import parse_records
from service.store import database as _database
from service.store import migrate as _migrate
from service.store import records as _records
from service.store import sealing as _sealing
from service.store.keystore import DataKeys
from shards.placement import Layout

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from fastapi import FastAPI
    from grpc import Server

    from service.core.deletions import Deletions
    from service.core.kb import AddResult, KnowledgeBase
    from service.core.reports import Reports
    from service.ledger.log import Ledger
    from service.rag.embed import MiniLM
    from service.rag.proxy import RagProxy
    from service.store.deletions import Authenticator
    from service.training import TrainingJob
    from service.verify.probes import ProbeConfig
    from service.workflow.deps import DeletionDeps, TrainingDeps
    from shards.basemodel import BuiltModel


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[_database.DatabaseInfo]:
    with _database.database(settings.database_url, settings.resolved_pg_data_dir()) as db:
        yield db


def migrate(db: _database.DatabaseInfo, settings: Settings | None = None) -> list[str]:
    """Lethe's SQL migrations, then the job queue's own schema (procrastinate versions it); with
    ``settings`` (its key store), text stored in clear before migration 0011 is sealed."""
    from service.workflow.queue import ensure_schema

    applied = _migrate.migrate(db.url)
    ensure_schema(db)
    if settings is not None and _sealing.pending(db):  # keys loaded only then (the init container has none)
        from service.core.forget import index_key

        key = keyfile.load_or_create(settings.resolved_hmac_key_file())
        _sealing.seal_legacy(db, data_keys(settings), index_key(key))
    return applied


def data_keys(settings: Settings) -> DataKeys:
    return DataKeys(settings.resolved_data_key_dir())


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def holdings(db: _database.DatabaseInfo) -> _records.Holdings:
    with db.connect() as conn:
        return _records.holdings(conn)


def ingest(db: _database.DatabaseInfo, settings: Settings, file: Path) -> _records.IngestResult:
    """Validate every line of ``file`` first, then write all of it in one transaction."""
    key = keyfile.load_or_create(settings.resolved_hmac_key_file())
    with file.open(encoding="utf-8") as f:
        records = parse_records(f, key, settings.max_record_bytes)
    layout = Layout(settings.s3t.shards, settings.s3t.slices)
    with db.connect() as conn:
        return _records.add_records(conn, data_keys(settings), records, layout)


def resolve_records(
    db: _database.DatabaseInfo, settings: Settings, records: list[str], subjects: list[str]
) -> list[str]:
    """Record ids named directly or through a subject identity (hashed with the server key)."""
    from service.core.identity import subject_hash
    from service.store import s3t

    key = keyfile.load_or_create(settings.resolved_hmac_key_file())
    hashes = [subject_hash(key, s) for s in subjects]
    with db.connect() as conn:
        return sorted(set(records) | set(s3t.record_ids_of_subjects(conn, hashes)))


def retired_ledger_keys(settings: Settings) -> list[tuple[str, Ed25519PublicKey]]:
    """(name, public key) of the earlier signing keys, whose checkpoints still verify."""
    from service.ledger.checkpoint import load_public_key

    return [(name, load_public_key(path)) for name, path in settings.ledger_retired_keys.items()]


def training_job(settings: Settings, base_model_path: Path) -> TrainingJob:
    from service.training import TrainingJob

    return TrainingJob(
        base_model_path, settings.artifacts_dir(), settings.s3t, settings.train, settings.resolved_data_key_dir()
    )


def base_model(settings: Settings, *, progress: bool = True) -> BuiltModel:
    """The configured base model, converted or built on first use; ``BaseModelError`` if unusable."""
    from shards import basemodel, modelinfo, pretrained

    if settings.base_model is not None:
        path, reused = settings.base_model.resolve(), True
    elif settings.builtin_model == "tiny-llama":
        return basemodel.build(settings.model, settings.models_dir(), progress=progress)
    else:
        path, reused = pretrained.ensure(settings.models_dir(), progress=progress)
    modelinfo.profile(path)  # one clear error for a directory that is not a usable causal LM
    return basemodel.describe(path, reused=reused)


def embedder() -> MiniLM:
    """One sentence-embedding model per process (loaded on first use)."""
    global _EMBEDDER
    if _EMBEDDER is None:
        from service.rag.embed import MiniLM

        _EMBEDDER = MiniLM()
    return _EMBEDDER


_EMBEDDER: MiniLM | None = None


def kb_ingest(db: _database.DatabaseInfo, settings: Settings, file: Path, *, progress: bool = True) -> AddResult:
    """Validate every line of ``file`` (nothing is written if one is bad), embed, store in one transaction."""
    from service.core.kb import parse_jsonl

    core = kb_core(db, settings)
    with file.open(encoding="utf-8") as f:
        docs = parse_jsonl(f, core.key, settings.max_record_bytes)
    return core.add_parsed(docs, progress=progress)


def probe_config(settings: Settings) -> ProbeConfig | None:
    """What the verify step's probes need: the base model and never-trained records (if present)."""
    import json

    from service.verify.probes import ProbeConfig

    path = settings.resolved_holdout_file()
    if not path.exists():
        return None
    texts = tuple(str(json.loads(line)["text"]) for line in path.read_text().splitlines() if line.strip())
    return ProbeConfig(base_model(settings, progress=False).path, texts, settings.serving.probes_via_replicas)


class Lethe:
    """The object graph of one process (see the module's docstring). Parts are built on first use
    and then shared: a CLI command that needs only the ledger loads no embedding model."""

    def __init__(self, settings: Settings, db: _database.DatabaseInfo) -> None:
        self.settings, self.db = settings, db

    @cached_property
    def hmac_key(self) -> bytes:
        return keyfile.load_or_create(self.settings.resolved_hmac_key_file())

    @cached_property
    def data_keys(self) -> DataKeys:
        return data_keys(self.settings)

    @cached_property
    def ledger(self) -> Ledger:
        from service.ledger.checkpoint import load_or_create_signing_key
        from service.ledger.log import Ledger

        s = self.settings
        key = load_or_create_signing_key(s.resolved_ledger_key_file())
        return Ledger(
            self.db,
            key,
            s.ledger_origin,
            s.ledger_key_name,
            s.ledger_checkpoint_every,
            s.ledger_checkpoint_seconds,
            retired_ledger_keys(s),
        )

    @cached_property
    def authenticator(self) -> Authenticator:
        from service.store.deletions import Authenticator

        return Authenticator(self.db)

    @cached_property
    def deletions(self) -> Deletions:
        from service.core.deletions import Deletions
        from service.store.deletions import PgDeletionStore
        from service.workflow.queue import enqueue_callbacks, enqueue_deletions

        return Deletions(
            PgDeletionStore(self.db, enqueue_deletions, enqueue_callbacks),
            SystemClock(),
            self.hmac_key,
            timedelta(days=self.settings.deletion_deadline_days),
        )

    @cached_property
    def reports(self) -> Reports:
        from service.core.reports import Reports
        from service.report.evidence import Evidence

        return Reports(self.deletions, Evidence(self.db, self.ledger))

    @cached_property
    def kb(self) -> KnowledgeBase:
        from service.core.forget import index_key
        from service.core.kb import KnowledgeBase
        from service.store.kb import PgDocumentStore

        store = PgDocumentStore(self.db, self.data_keys, index_key(self.hmac_key))
        return KnowledgeBase(store, embedder(), self.hmac_key, self.settings.max_record_bytes)

    @cached_property
    def rag(self) -> RagProxy | None:
        """The retrieval proxy for ``rag:<upstream model>``; None without an upstream URL."""
        from service.rag.proxy import RagProxy

        r = self.settings.rag
        if not r.upstream_url:
            return None
        return RagProxy(self.db, self.data_keys, embedder(), self.hmac_key, r, r.upstream_url)

    def rest_app(self, serving_ready: Callable[[], bool] | None = None) -> FastAPI:
        """``serving_ready``: under ``lethe serve``, ready also needs every replica on the current adapters."""
        import prometheus_client

        from service.api.rest.app import create_app
        from service.metrics import LetheCollector

        db = self.db

        def ready() -> bool:
            return _database.reachable(db) and (serving_ready is None or serving_ready())

        registry = prometheus_client.CollectorRegistry()
        registry.register(LetheCollector(db))
        return create_app(self.deletions, self.ledger, self.authenticator, ready, registry, self.kb, self.reports)

    def grpc_server(self, address: str | None = None) -> tuple[Server, int]:
        """The gRPC server (not started) over the same core as REST; TLS/mTLS when configured."""
        import grpc

        from service.api.grpc.server import build_server

        s = self.settings
        creds = None
        if s.grpc_tls_cert and s.grpc_tls_key:
            ca = s.grpc_client_ca.read_bytes() if s.grpc_client_ca else None
            creds = grpc.ssl_server_credentials(
                [(s.grpc_tls_key.read_bytes(), s.grpc_tls_cert.read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
        address = address or s.grpc_address
        return build_server(self.deletions, self.ledger, self.authenticator, address, creds, self.kb, self.reports)

    def deletion_deps(self) -> DeletionDeps:
        """What the deletion worker's saga acts on."""
        from service.workflow.deps import deletion_deps

        s = self.settings
        return deletion_deps(
            self.db,
            self.data_keys,
            s.artifacts_dir(),
            ledger=self.ledger,
            hmac_key=self.hmac_key,
            ack_timeout=s.serving.ack_timeout_seconds,
            aggregation=s.serving.aggregation,
            fail_closed=s.serving.fail_closed,
            probes=probe_config(s),
            rag=self.rag,
            batch_window=s.batch_window_seconds,
            batch_max=s.batch_max_requests,
            retrain_delay=s.retrain_delay_seconds,
        )

    def training_deps(self, base_model_path: Path, *, progress: bool = True) -> TrainingDeps:
        from service.workflow.deps import TrainingDeps

        return TrainingDeps(self.db, training_job(self.settings, base_model_path), progress=progress)


def deletions_core(db: _database.DatabaseInfo, settings: Settings) -> Deletions:
    return Lethe(settings, db).deletions


def rest_app(
    db: _database.DatabaseInfo, settings: Settings, serving_ready: Callable[[], bool] | None = None
) -> FastAPI:
    return Lethe(settings, db).rest_app(serving_ready)


def grpc_server(db: _database.DatabaseInfo, settings: Settings, address: str | None = None) -> tuple[Server, int]:
    return Lethe(settings, db).grpc_server(address)


def ledger(db: _database.DatabaseInfo, settings: Settings) -> Ledger:
    return Lethe(settings, db).ledger


def kb_core(db: _database.DatabaseInfo, settings: Settings) -> KnowledgeBase:
    return Lethe(settings, db).kb


def reports(db: _database.DatabaseInfo, settings: Settings) -> Reports:
    return Lethe(settings, db).reports


def rag_proxy(db: _database.DatabaseInfo, settings: Settings) -> RagProxy | None:
    return Lethe(settings, db).rag
