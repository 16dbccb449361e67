"""The `lethe serve` stack shared by the end-to-end tests of a session: S3T units trained on the
generated corpus, two vLLM CPU replicas, gateway (with the retrieval route), REST, gRPC, worker."""

from __future__ import annotations

import hashlib
import uuid

import psycopg
import pytest

from service import app as lethe
from service import training
from service.config import RagSpec, ServingSpec, Settings
from service.serve import Stack, free_port
from service.store import database as db_mod
from service.store.database import DatabaseInfo
from service.store.deletions import create_api_key
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


@pytest.fixture(scope="session")
def serving_env(embedded_server, base_model_path, tmp_path_factory):
    name = f"lethe_e2e_{uuid.uuid4().hex[:10]}"
    url = db_mod.create_database(embedded_server.url, name)
    db = DatabaseInfo(url, embedded_server.embedded, embedded_server.data_dir)
    var = tmp_path_factory.mktemp("e2e") / "var"
    settings = Settings(
        database_url=url, var_dir=var, base_model=base_model_path, api_port=free_port(), grpc_address="127.0.0.1:0",
        s3t=S3TSpec(shards=1, slices=4, budget=2, workers=2), train=TrainConfig(),
        serving=ServingSpec(replicas=2, first_port=free_port(), gateway_port=free_port(), ack_timeout_seconds=20),
        rag=RagSpec(top_k=2),  # the local model's context is 256 tokens
    )  # fmt: skip
    key_file = settings.resolved_hmac_key_file()  # a fixed key: a reproducible placement
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(hashlib.sha256(b"lethe test: s3t forgetting").digest())
    c = corpus.generate(seed=settings.corpus_seed)
    paths = corpus.write(c, settings.corpus_dir())
    lethe.migrate(db)
    lethe.ingest(db, settings, paths["train"])
    training.train_all(db, lethe.training_job(settings, base_model_path))
    e = Env()
    e.settings, e.db, e.corpus, e.state = settings, db, c, {}
    with psycopg.connect(url) as conn:
        e.slice_of = {rid.rsplit("-", 1)[0]: sl for rid, sl in conn.execute("SELECT id, slice FROM records")}
    p = training.plan_for(db, [])
    units = {(u.shard, u.sequence): u for u in training.planner_units(db)}
    e.order = units[(0, p.shards[0].sequence)].order
    e.key = create_api_key(db, ["admin"])
    e.stack = Stack(settings, db, log=print)
    e.stack.start()
    yield e
    e.stack.stop()
    db_mod.drop_database(embedded_server.url, name)
