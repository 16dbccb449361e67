"""The composition root builds one object graph: REST and gRPC (and the worker) get the same parts."""

from __future__ import annotations

from service import app as lethe
from service.api.grpc import server as grpc_server
from service.api.rest import app as rest_app
from service.config import Settings
from service.store.database import DatabaseInfo

URL = "postgresql://lethe@127.0.0.1:1/never-connected"  # building the graph connects to nothing


def test_both_transports_hold_the_same_core_ledger_authenticator_kb_and_reports(tmp_path, monkeypatch):
    got: dict[str, tuple] = {}
    monkeypatch.setattr(rest_app, "create_app", lambda *a: got.setdefault("rest", a))
    monkeypatch.setattr(grpc_server, "build_server", lambda *a: (got.setdefault("grpc", a), 0))
    graph = lethe.Lethe(Settings(_env_file=None, var_dir=tmp_path, database_url=URL), DatabaseInfo(URL, embedded=False))  # type: ignore[call-arg]
    graph.rest_app()
    graph.grpc_server("127.0.0.1:0")
    deletions, ledger, auth, *_, kb, reports = got["rest"]
    assert deletions is graph.deletions and ledger is graph.ledger and auth is graph.authenticator and kb is graph.kb
    assert reports is graph.reports and reports.deletions is deletions  # the report reads through the same core
    g_deletions, g_ledger, g_auth, _, _, g_kb, g_reports = got["grpc"]
    assert (g_deletions, g_ledger, g_auth, g_kb, g_reports) == (deletions, ledger, auth, kb, reports)
    assert g_deletions is deletions and g_ledger is ledger and g_auth is auth and g_kb is kb and g_reports is reports
    # and the worker's saga signs with the same ledger writer and opens text with the same key store
    deps = graph.deletion_deps()
    assert deps.ledger is ledger and deps.keys is graph.data_keys and deps.db is graph.db


def test_each_graph_builds_its_own_parts(tmp_path):
    s = Settings(_env_file=None, var_dir=tmp_path, database_url=URL)  # type: ignore[call-arg]
    a, b = lethe.Lethe(s, DatabaseInfo(URL, embedded=False)), lethe.Lethe(s, DatabaseInfo(URL, embedded=False))
    assert a.deletions is a.deletions and a.deletions is not b.deletions
