"""Accepted deletion requests per second over REST and gRPC, against a plain INSERT baseline.

A request counts only once the server answered 2xx, which it sends only after the request row,
its ledger entry and its workflow job are committed. Everything runs on this machine in the same
run: an embedded PostgreSQL, the real `lethe api` process (REST + gRPC), and C concurrent clients.

    .venv/bin/python tests/bench/api_throughput.py [--clients 8 --seconds 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.api.grpc.gen.lethe.v1 import deletion_pb2, deletion_pb2_grpc  # noqa: E402
from service.store import database as dbm  # noqa: E402
from service.store.deletions import create_api_key  # noqa: E402
from service.store.migrate import migrate  # noqa: E402
from service.workflow.queue import ensure_schema  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_clients(n: int, seconds: float, one: object) -> tuple[int, list[float]]:
    """n threads call one(i) until the deadline; returns (accepted, latencies in seconds)."""
    stop = time.monotonic() + seconds
    lat: list[float] = []
    lock = threading.Lock()

    def loop(i: int) -> None:
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            one(i)  # type: ignore[operator]
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat), lat


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lethe-bench-"))
    with dbm.database(None, tmp / "pg") as server:
        url = dbm.create_database(server.url, "bench")
        db = dbm.DatabaseInfo(url, True)
        migrate(url)
        ensure_schema(db)
        key = create_api_key(db, ["admin"])

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE baseline (id uuid PRIMARY KEY, body jsonb NOT NULL, at timestamptz DEFAULT now())"
            )
        conns = [psycopg.connect(url, autocommit=True) for _ in range(args.clients)]

        def insert(i: int) -> None:
            conns[i].execute('INSERT INTO baseline (id, body) VALUES (%s, \'{"status": "pending"}\')', (uuid.uuid4(),))

        base_n, base_lat = run_clients(args.clients, args.seconds, insert)

        rest_port, grpc_port = free_port(), free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "LETHE_VAR_DIR": str(tmp / "var"),
            "LETHE_API_PORT": str(rest_port),
            "LETHE_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        }
        api = subprocess.Popen(
            [sys.executable, "-m", "service", "api"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            base_url = f"http://127.0.0.1:{rest_port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{base_url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            headers = {"Authorization": f"Bearer {key}"}
            clients = [httpx.Client(base_url=base_url, headers=headers, timeout=30) for _ in range(args.clients)]

            def rest(i: int) -> None:
                ident = {"identity_type": "email", "identity_value": f"{uuid.uuid4().hex}@x.org"}
                body = {
                    "subject_request_id": str(uuid.uuid4()),
                    "subject_request_type": "erasure",
                    "subject_identities": [ident],
                }
                r = clients[i].post("/v1/deletions", json=body)
                assert r.status_code == 201, r.text

            rest_n, rest_lat = run_clients(args.clients, args.seconds, rest)

            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            stub = deletion_pb2_grpc.DeletionServiceStub(channel)
            md = [("authorization", f"Bearer {key}")]

            def rpc(i: int) -> None:
                stub.SubmitDeletion(
                    deletion_pb2.SubmitDeletionRequest(
                        subject_request_id=str(uuid.uuid4()),
                        subject_request_type="erasure",
                        subject_identities=[
                            deletion_pb2.SubjectIdentity(
                                identity_type="email", identity_value=f"{uuid.uuid4().hex}@x.org"
                            )
                        ],
                    ),
                    metadata=md,
                )

            grpc_n, grpc_lat = run_clients(args.clients, args.seconds, rpc)
        finally:
            api.terminate()
            api.wait(30)
        with psycopg.connect(url) as conn:
            ledger = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]  # type: ignore[index]
        for c in conns:
            c.close()
        dbm.drop_database(server.url, "bench")

    s = args.seconds
    print(f"{args.clients} concurrent clients, {s:.0f} s each, embedded PostgreSQL 18 (fsync on), 2 cores shared")
    print("\n| path | accepted/s | × baseline | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    rows = (
        ("plain single-row INSERT (baseline)", base_n, base_lat),
        ("REST POST /v1/deletions", rest_n, rest_lat),
        ("gRPC SubmitDeletion", grpc_n, grpc_lat),
    )
    for name, n, lat in rows:
        print(f"| {name} | {n / s:.0f} | {n / base_n:.2f} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} |")
    print(f"\nledger entries written: {ledger} (= accepted requests: {rest_n + grpc_n})")


if __name__ == "__main__":
    main()
