"""Retrieval-proxy overhead and knowledge-base search latency.

1. Proxy vs upstream, same run, same upstream: a vLLM CPU OpenAI server on the local base model.
   "direct" sends the upstream the very prompt the proxy would build (retrieved chunks + question),
   so the difference is what the proxy adds: embedding the query, the pgvector search, the forget
   match, the leakage gate and one more HTTP hop. Requests alternate between the two paths.
2. KB search at scale: 100k chunks in pgvector (HNSW, cosine). Their vectors are random unit
   vectors (embedding 100k texts would take ~10 min here and does not change an index lookup's
   cost); the queries are real embeddings of real questions.

    .venv/bin/python tests/bench/rag_overhead.py [--requests 200 --chunks 100000]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service import app as lethe  # noqa: E402
from service.config import RagSpec, Settings  # noqa: E402
from service.gateway.app import create_gateway  # noqa: E402
from service.serve import free_port  # noqa: E402
from service.serving.vllm import VllmProcess  # noqa: E402
from service.store import database as dbm  # noqa: E402
from service.store import kb  # noqa: E402
from service.store.deletions import Authenticator, create_api_key  # noqa: E402
from shards import corpus  # noqa: E402
from tests.bench.stats import pct  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--searches", type=int, default=300)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lethe-rag-"))
    base = lethe.base_model(Settings(var_dir=ROOT / "var"), progress=False).path
    people = corpus.people(random.Random("rag-bench"), 200, "b")
    with dbm.database(None, tmp / "pg") as server:
        url = dbm.create_database(server.url, "rag")
        db = dbm.DatabaseInfo(url, True)
        port = free_port()  # top_k 2: the local model's context is 256 tokens
        s = Settings(
            database_url=url,
            var_dir=tmp / "var",
            base_model=base,
            rag=RagSpec(upstream_url=f"http://127.0.0.1:{port}/v1", top_k=2),
        )
        lethe.migrate(db)
        docs = tmp / "kb.jsonl"
        docs.write_text(
            "".join(
                json.dumps(
                    {
                        "id": f"doc-{p.subject_id}",
                        "subject_ids": p.identities,
                        "source": "crm",
                        "text": " ".join(p.render(t) for t in (0, 1, 2, 3)),
                    }
                )
                + "\n"
                for p in people
            )
        )
        lethe.kb_ingest(db, s, docs, progress=False)
        key = create_api_key(db, ["inference"])
        vllm = VllmProcess(
            base, port, max_lora_rank=8, max_model_len=s.serving.max_model_len, log_path=tmp / "vllm.log"
        )
        vllm.start()
        try:
            vllm.wait_ready(300)
            proxy = lethe.rag_proxy(db, s)
            assert proxy is not None
            gw_port = free_port()
            server_ = uvicorn.Server(
                uvicorn.Config(
                    create_gateway(None, Authenticator(db), rag=proxy),
                    host="127.0.0.1",
                    port=gw_port,
                    log_level="warning",
                )
            )
            threading.Thread(target=server_.run, daemon=True).start()
            while not server_.started:
                time.sleep(0.05)
            overhead = _proxy_vs_direct(proxy, people, port, gw_port, key, args)
            server_.should_exit = True
        finally:
            vllm.stop()
        search = _search_at_scale(db, lethe.data_keys(s), people, args.chunks, args.searches)
        dbm.drop_database(server.url, "rag")

    print(
        f"\n{args.requests} requests per path, vLLM CPU upstream on the local base model, "
        f"{args.max_tokens} tokens, greedy, {len(people)} KB documents"
    )
    print("\n| path | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for name, values in overhead.items():
        print(f"| {name} | {statistics.median(values) * 1e3:.1f} | {pct(values, 99) * 1e3:.1f} |")
    d50, p50 = statistics.median(overhead["upstream directly"]), statistics.median(overhead["through the proxy"])
    r50 = statistics.median(overhead["retrieval only"])
    print(
        f"\nproxy adds {(p50 - d50) * 1e3:+.1f} ms at p50 ({(p50 / d50 - 1) * 100:+.1f}%); retrieval alone "
        f"(embed + search + forget match) p50 {r50 * 1e3:.1f} ms"
    )
    print(f"\nKB search at {search['chunks']:,} chunks (HNSW, cosine, k=3; index built in {search['build_s']:.0f} s):")
    print("\n| step | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for name in ("embed query", "search"):
        print(f"| {name} | {statistics.median(search[name]) * 1e3:.2f} | {pct(search[name], 99) * 1e3:.2f} |")


def _proxy_vs_direct(proxy, people, port: int, gw_port: int, key: str, args) -> dict[str, list[float]]:
    direct = httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=60)
    gateway = httpx.Client(
        base_url=f"http://127.0.0.1:{gw_port}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    out: dict[str, list[float]] = {"upstream directly": [], "through the proxy": [], "retrieval only": []}
    for i in range(args.requests + 10):  # the first 10 warm up
        q = people[i % len(people)].probe()[0]
        t0 = time.perf_counter()
        prefix = proxy.prompt_prefix(proxy.retrieve(q))
        retrieval = time.perf_counter() - t0
        bodies = [
            (gateway, {"model": proxy.route, "prompt": q}),
            (direct, {"model": "base", "prompt": f"{prefix}\n{q}"}),
        ]
        timings = {}
        for client, body in bodies[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            r = client.post("/completions", json={**body, "max_tokens": args.max_tokens, "temperature": 0})
            r.raise_for_status()
            timings[body["model"]] = time.perf_counter() - t0
        if i >= 10:
            out["through the proxy"].append(timings[proxy.route])
            out["upstream directly"].append(timings["base"])
            out["retrieval only"].append(retrieval)
    return out


def _search_at_scale(db, keys, people, n: int, searches: int) -> dict:
    from service.rag.embed import MiniLM

    rng = np.random.default_rng(0)
    with db.connect() as conn:
        conn.execute("DROP INDEX kb_chunks_embedding")  # bulk load first, then build the index once
        conn.execute("INSERT INTO kb_documents (id, source, text, content_hash) VALUES ('filler', 'bench', '', '')")
        buf = io.StringIO()
        for start in range(0, n, 10_000):
            vecs = rng.standard_normal((min(10_000, n - start), 384)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            for j, v in enumerate(vecs):
                buf.write(f"filler\t{start + j}\tfiller chunk\t[{','.join(f'{x:.6f}' for x in v)}]\n")
        buf.seek(0)
        with conn.cursor().copy("COPY kb_chunks (document_id, ord, text, embedding) FROM STDIN") as cp:
            cp.write(buf.getvalue())
    t0 = time.perf_counter()
    with db.connect() as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("CREATE INDEX kb_chunks_embedding ON kb_chunks USING hnsw (embedding vector_cosine_ops)")
        total = conn.execute("SELECT count(*) FROM kb_chunks").fetchone()[0]
    build = time.perf_counter() - t0
    emb = MiniLM()
    emb.embed(["warm up"])
    res: dict = {"chunks": total, "build_s": build, "embed query": [], "search": []}
    with db.connect() as conn:
        for i in range(searches):
            q = f"What is the personal code of {people[i % len(people)].name}? ({uuid.uuid4().hex[:4]})"
            t0 = time.perf_counter()
            v = emb.embed([q])[0]
            t1 = time.perf_counter()
            hits = kb.search(conn, keys, v, 3, 0.0)
            t2 = time.perf_counter()
            assert hits
            res["embed query"].append(t1 - t0)
            res["search"].append(t2 - t1)
    return res


if __name__ == "__main__":
    main()
