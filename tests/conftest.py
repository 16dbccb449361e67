"""Session-wide fixtures: one database server and one base model per test session.

The embedded PostgreSQL under ``var/test/pg`` is always used; ``TEST_DATABASE_URL`` adds a
real external server, and every database test then runs against both. Each test gets its own
freshly created database on the server, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from service.store import database as db_mod
from service.store.database import DatabaseInfo

ROOT = Path(__file__).resolve().parents[1]
TEST_VAR = ROOT / "var" / "test"

SERVERS = ["embedded"] + (["external"] if os.environ.get("TEST_DATABASE_URL") else [])


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[DatabaseInfo]:
    with db_mod.database(None, TEST_VAR / "pg") as info:
        yield info


@pytest.fixture(scope="session", params=SERVERS)
def db_server(request: pytest.FixtureRequest) -> DatabaseInfo:
    if request.param == "external":
        return DatabaseInfo(url=os.environ["TEST_DATABASE_URL"], embedded=False)
    return request.getfixturevalue("embedded_server")


@pytest.fixture
def empty_db(db_server: DatabaseInfo) -> Iterator[DatabaseInfo]:
    """A new, empty database on the session's server, dropped afterwards."""
    name = f"lethe_test_{uuid.uuid4().hex[:12]}"
    url = db_mod.create_database(db_server.url, name)
    yield DatabaseInfo(url=url, embedded=db_server.embedded, data_dir=db_server.data_dir)
    db_mod.drop_database(db_server.url, name)


@pytest.fixture
def settings(tmp_path: Path, empty_db: DatabaseInfo) -> Settings:
    """Settings pointing at a fresh database and a private var dir (keys, corpora)."""
    return Settings(database_url=empty_db.url, var_dir=tmp_path / "var")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The default base model, Gemma 3 270M, converted once and cached under var/models (shared
    with the demo): every test of an outcome a user would look for (recall, forgetting, reading)."""
    from service import app as lethe

    return lethe.base_model(Settings(var_dir=ROOT / "var"), progress=True).path


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny local Llama (7 M parameters), built once: tests of mechanics only (it cannot recall
    a fact or read its context)."""
    from service import app as lethe

    return lethe.base_model(Settings(var_dir=ROOT / "var", builtin_model="tiny-llama"), progress=True).path


@pytest.fixture(scope="session")
def spans():
    """Every span this process finishes, in memory (the global tracer provider is set once)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter
