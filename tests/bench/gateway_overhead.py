"""Gateway overhead: completion latency through Lethe's gateway against the same vLLM replica directly.

Real parts in one run: embedded PostgreSQL, an S3T adapter trained here (quality is irrelevant,
so a short run), one vLLM CPU replica with its reconciler, the gateway (auth, routing, renaming).
Both paths ask the same replica for the same completion of the served adapter: directly under its
internal routing name, and through the gateway as model ``lethe``; requests alternate between the
paths so drift in the engine's speed hits both alike.

    .venv/bin/python tests/bench/gateway_overhead.py [--requests 200 --max-tokens 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service import app as lethe  # noqa: E402
from service.config import ServingSpec, Settings  # noqa: E402
from service.serve import Stack, free_port  # noqa: E402
from service.serving.vllm import BASE_NAME  # noqa: E402
from service.store import database as dbm  # noqa: E402
from service.store import serving as serving_store  # noqa: E402
from service.store.deletions import create_api_key  # noqa: E402
from service.workflow import training_jobs  # noqa: E402
from shards import corpus  # noqa: E402
from shards.specs import S3TSpec, TrainConfig  # noqa: E402
from tests.bench.stats import pct  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="per path and mode")
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lethe-gw-"))
    base = lethe.base_model(Settings(var_dir=ROOT / "var"), progress=False).path
    with dbm.database(None, tmp / "pg") as server:
        url = dbm.create_database(server.url, "gw")
        db = dbm.DatabaseInfo(url, True)
        s = Settings(
            database_url=url,
            var_dir=tmp / "var",
            base_model=base,
            api_port=free_port(),
            grpc_address="127.0.0.1:0",
            s3t=S3TSpec(shards=1, slices=4, budget=1, workers=1),
            train=TrainConfig(epochs=1),
            serving=ServingSpec(replicas=1, first_port=free_port(), gateway_port=free_port()),
        )
        c = corpus.generate(seed=s.corpus_seed)
        lethe.migrate(db)
        lethe.ingest(db, s, corpus.write(c, s.corpus_dir())["train"])
        training_jobs.train_all(db, lethe.training_job(s, base))
        key = create_api_key(db, ["inference"])
        stack = Stack(s, db, with_worker=False)
        stack.start()
        try:
            with db.connect() as conn:
                replica = serving_store.replicas(conn)[0]
            internal = replica.serving_names[0] if replica.serving_names else BASE_NAME
            direct = httpx.Client(base_url=replica.url, timeout=60)
            gateway = httpx.Client(
                base_url=f"http://127.0.0.1:{stack.gateway_port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
            prompts = [p.probe()[0] for p in c.trained]
            results = {}
            for mode in ("completion", "streamed completion"):
                stream = mode.startswith("streamed")
                runs: dict[str, list[float]] = {"direct": [], "gateway": []}
                for i in range(args.requests + 10):  # the first 10 of each warm up
                    body = {
                        "prompt": prompts[i % len(prompts)],
                        "max_tokens": args.max_tokens,
                        "temperature": 0,
                        "stream": stream,
                    }
                    for path, client, model in (("direct", direct, internal), ("gateway", gateway, "lethe"))[
                        :: 1 if i % 2 else -1
                    ]:
                        took = _complete(client, {**body, "model": model}, stream)
                        if i >= 10:
                            runs[path].append(took)
                results[mode] = runs
        finally:
            stack.stop()
        dbm.drop_database(server.url, "gw")

    print(f"\n{args.requests} requests per path and mode, one vLLM CPU replica, {args.max_tokens} tokens, greedy")
    print("\n| mode | direct p50 ms | gateway p50 ms | overhead p50 | direct p99 ms | gateway p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, runs in results.items():
        d50, g50 = statistics.median(runs["direct"]), statistics.median(runs["gateway"])
        print(
            f"| {mode} | {d50 * 1e3:.1f} | {g50 * 1e3:.1f} | {(g50 / d50 - 1) * 100:+.1f}% "
            f"({(g50 - d50) * 1e3:+.1f} ms) | {pct(runs['direct'], 99) * 1e3:.1f} | "
            f"{pct(runs['gateway'], 99) * 1e3:.1f} |"
        )


def _complete(client: httpx.Client, body: dict[str, object], stream: bool) -> float:
    """Seconds until the whole completion (every streamed chunk) has arrived."""
    t0 = time.perf_counter()
    if not stream:
        r = client.post("/v1/completions", json=body)
        r.raise_for_status()
        took = time.perf_counter() - t0
        if not r.json()["choices"][0]["text"]:
            raise RuntimeError("empty completion")
        return took
    with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        chunks = [line for line in r.iter_lines() if line.startswith("data: ")]
    took = time.perf_counter() - t0
    if chunks[-1] != "data: [DONE]":
        raise RuntimeError("stream did not finish")
    return took


if __name__ == "__main__":
    main()
