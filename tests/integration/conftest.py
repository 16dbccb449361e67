"""The `lethe serve` stack shared by the end-to-end tests of a session: S3T units trained on the
generated corpus, two vLLM CPU replicas, gateway (with the retrieval route), REST, gRPC, worker."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from service import app as lethe
from service import training
from service.config import RagSpec, ServingSpec, Settings
from service.serve import Stack, free_port
from service.store import database as db_mod
from service.store.database import DatabaseInfo
from service.store.deletions import create_api_key
from service.workflow import training_jobs
from shards import corpus
from shards.specs import S3TSpec, TrainConfig


class Env:
    stack: Stack
    settings: Settings
    db: DatabaseInfo
    corpus: corpus.Corpus
    key: str
    slice_of: dict[str, int]  # subject id → slice
    order: tuple[int, ...]  # the served sequence's slice order before any deletion
    state: dict[str, object]


TRAINED_KEY = hashlib.sha256(b"lethe test: s3t forgetting").digest()  # a fixed key: a reproducible placement


@dataclass(frozen=True)
class Trained:
    """A database and var dir holding the generated corpus, ingested, and every S3T unit trained."""

    name: str  # the template database
    var: Path
    corpus: corpus.Corpus


def s3t_settings(url: str, var: Path, base_model: Path, **more: object) -> Settings:
    """The layout the forgetting test and the serving stack share, the demo's: Gemma 3 270M, 1 shard
    × 4 slices of 3 people, 2 sequences, the default training recipe."""
    return Settings(
        database_url=url,
        var_dir=var,
        base_model=base_model,
        s3t=S3TSpec(shards=1, slices=4, budget=2, workers=2),
        train=TrainConfig(),
        **more,
    )


@pytest.fixture(scope="session")
def trained_s3t(embedded_server, gemma_path, tmp_path_factory):
    """Trained once a session on Gemma (≈ 8 min here), cloned by each user (clone_trained)."""
    name = f"lethe_trained_{uuid.uuid4().hex[:10]}"
    url = db_mod.create_database(embedded_server.url, name)
    db = DatabaseInfo(url, embedded_server.embedded, embedded_server.data_dir)
    var = tmp_path_factory.mktemp("trained") / "var"
    settings = s3t_settings(url, var, gemma_path)
    key_file = settings.resolved_hmac_key_file()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(TRAINED_KEY)
    c = settings.generated_corpus()
    lethe.migrate(db)
    lethe.ingest(db, settings, corpus.write(c, settings.corpus_dir())["train"])
    training_jobs.train_all(db, lethe.training_job(settings, gemma_path))
    db_mod.close_pool(url)
    seal_template(embedded_server.url, name)
    yield Trained(name, settings.var_dir, c)
    db_mod.drop_database(embedded_server.url, name)


def seal_template(admin_url: str, name: str) -> None:
    """Refuse new connections to the template and end any left (CREATE DATABASE … TEMPLATE fails
    while another session is in it: a CI run once met one right after training), naming them."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        left = conn.execute(
            "SELECT pid, application_name, state, left(query, 120) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        ).fetchall()
        for pid, app, state, query in left:
            print(f"template {name}: ending a leftover session pid={pid} app={app!r} state={state} last={query!r}")
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


def clone_trained(t: Trained, server: DatabaseInfo, var: Path) -> DatabaseInfo:
    """A new database and var dir with the trained state: the template copied by PostgreSQL, the
    files copied, and the artifact paths pointed at the copy."""
    name = f"lethe_clone_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(t.name)))
    params = psycopg.conninfo.conninfo_to_dict(server.url)
    params["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    shutil.copytree(t.var, var)
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE s3t_artifacts SET path = replace(path, %s, %s)", (str(t.var), str(var.resolve())))
    return DatabaseInfo(url, server.embedded, server.data_dir)


@pytest.fixture(scope="session")
def serving_env(embedded_server, trained_s3t, gemma_path, tmp_path_factory):
    var = tmp_path_factory.mktemp("e2e") / "var"
    db = clone_trained(trained_s3t, embedded_server, var)
    settings = s3t_settings(
        db.url,
        var,
        gemma_path,
        api_port=free_port(),
        grpc_address="127.0.0.1:0",
        serving=ServingSpec(replicas=2, first_port=free_port(), gateway_port=free_port(), ack_timeout_seconds=20),
        rag=RagSpec(top_k=1),  # Gemma reads one retrieved record best (docs/benchmarks.md)
        # requests submitted back to back join one batch however soon the batch before ends its rollout
        batch_window_seconds=1.5,
    )
    c = trained_s3t.corpus
    assert training_jobs.train_all(db, lethe.training_job(settings, gemma_path)) == []  # the clone is complete
    e = Env()
    e.settings, e.db, e.corpus, e.state = settings, db, c, {}
    with psycopg.connect(db.url) as conn:
        e.slice_of = {rid.rsplit("-", 1)[0]: sl for rid, sl in conn.execute("SELECT id, slice FROM records")}
    p = training.plan_for(db, [])
    units = {(u.shard, u.sequence): u for u in training.planner_units(db)}
    e.order = units[(0, p.shards[0].sequence)].order
    e.key = create_api_key(db, ["admin"])
    e.stack = Stack(settings, db, log=print)
    e.stack.start()
    yield e
    e.stack.stop()
    db_mod.drop_database(embedded_server.url, psycopg.conninfo.conninfo_to_dict(db.url)["dbname"])
