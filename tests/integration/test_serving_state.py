"""Serving state in real PostgreSQL, and the reconciler's swap order against a recording vLLM stand-in
(the real engine is exercised in test_serving_e2e)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from service import app as lethe
from service.serving import rollout
from service.serving.reconciler import Reconciler
from service.store import serving as store


@pytest.fixture
def db(empty_db):
    lethe.migrate(empty_db)
    return empty_db


def adapter(root: Path, name: str, r: int) -> tuple[Path, str]:
    """A real (tiny) PEFT adapter directory and its content hash."""
    import torch
    from safetensors.torch import save_file

    from shards.lineage import adapter_sha256

    d = root / name
    d.mkdir(parents=True)
    save_file(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.full((r, 4), 0.5)},
        str(d / "adapter_model.safetensors"),
    )
    (d / "adapter_config.json").write_text(f'{{"r": {r}, "lora_alpha": {r}, "target_modules": ["q_proj"]}}')
    return d, adapter_sha256(d)


def test_publish_is_idempotent_and_bumps_the_generation_on_change(db, tmp_path):
    a, ha = adapter(tmp_path, "a", 1)
    b, hb = adapter(tmp_path, "b", 2)
    with db.connect() as conn:
        g1 = store.publish(conn, str(a), ha, "single", None)
        assert store.publish(conn, str(a), ha, "single", None) == g1
        g2 = store.publish(conn, str(b), hb, "single", None)
        g3 = store.publish(conn, None, None, "base", None)
    assert (g1.generation, g2.generation, g3.generation) == (1, 2, 3)
    assert g2.name == f"lethe-g2-{hb[:12]}" and g3.name is None


def test_acknowledging_an_old_generation_never_makes_a_replica_routable(db, tmp_path):
    a, ha = adapter(tmp_path, "a", 1)
    with db.connect() as conn:
        store.register(conn, "r0", "http://x")
        g = store.publish(conn, str(a), ha, "single", None)
        assert store.acknowledge(conn, "r0", g.generation)
        g2 = store.publish(conn, None, None, "base", None)
        assert store.lagging(conn, g2.generation) == ["r0"]
        assert not store.acknowledge(conn, "r0", g.generation)  # late ack of the superseded one
        (r0,) = store.replicas(conn)
        assert not r0.routable and r0.note == "behind"
        assert store.lagging(conn, g2.generation) == []


def test_the_wait_removes_laggards_atomically(db, tmp_path):
    a, ha = adapter(tmp_path, "a", 1)
    with db.connect() as conn:
        for rid in ("r0", "r1"):
            store.register(conn, rid, "http://x")
        g = store.publish(conn, str(a), ha, "single", None)
        store.acknowledge(conn, "r0", g.generation)
        store.acknowledge(conn, "r1", g.generation)
        g2 = store.publish(conn, None, None, "base", None)
        store.acknowledge(conn, "r0", g2.generation)
    out = rollout.wait_acknowledged(db, g2, timeout=0.3)
    assert (out.acked, out.removed) == (["r0"], ["r1"])
    with db.connect() as conn:
        assert [r.id for r in store.replicas(conn) if r.routable] == ["r0"]


def test_a_slow_rollout_never_empties_routing_and_waits_until_a_replica_acknowledges(db, tmp_path):
    """No replica acknowledges in time: both stay routable (on the old weights) and the rollout
    waits, reporting it, instead of completing with nothing served; once one acknowledges, the
    other leaves routing and the rollout completes. Failing closed removes them all at once."""
    import threading

    a, ha = adapter(tmp_path, "a", 1)
    with db.connect() as conn:
        for rid in ("r0", "r1"):
            store.register(conn, rid, "http://x")
        g = store.publish(conn, str(a), ha, "single", None)
        for rid in ("r0", "r1"):
            store.acknowledge(conn, rid, g.generation)
        g2 = store.publish(conn, None, None, "base", None)
    waits: list[tuple[int, list[str]]] = []
    waited = threading.Event()

    def on_wait(generation: int, behind: list[str], seconds: float) -> None:
        waits.append((generation, behind))
        waited.set()

    result: list[rollout.Acks] = []
    t = threading.Thread(target=lambda: result.append(rollout.wait_acknowledged(db, g2, 0.2, on_wait=on_wait)))
    t.start()
    assert waited.wait(30)
    assert t.is_alive() and waits[0] == (g2.generation, ["r0", "r1"])
    with db.connect() as conn:
        assert [r.id for r in store.replicas(conn) if r.routable] == ["r0", "r1"]
        store.acknowledge(conn, "r1", g2.generation)
    t.join(30)
    assert not t.is_alive() and (result[0].acked, result[0].removed) == (["r1"], ["r0"])
    # fail closed: after the timeout every laggard leaves routing, even the last ones
    g3 = None
    with db.connect() as conn:
        g3 = store.publish(conn, str(a), ha, "single", None)
    out = rollout.wait_acknowledged(db, g3, 0.2, fail_closed=True)
    assert (out.acked, out.removed) == ([], ["r1"])
    with db.connect() as conn:
        assert not any(r.routable for r in store.replicas(conn))


class RecordingVllm:
    """Stands in for one replica's admin API; records the calls in order."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.paths: dict[str, Path] = {}
        self.healthy_ = True

    def healthy(self) -> bool:
        return self.healthy_

    def adapters(self) -> set[str]:
        return set(self.loaded)

    def load(self, name: str, path: Path) -> None:
        assert path.exists()
        self.calls.append(("load", name))
        self.paths[name] = path
        self.loaded.add(name)

    def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        self.loaded.discard(name)

    def close(self) -> None:
        pass


def recording_reconciler(db, tmp_path) -> tuple[Reconciler, RecordingVllm]:
    """Replica r0's reconciler, registered, talking to a recording stand-in of vLLM's admin API."""
    rec = Reconciler(db, "r0", "http://replica", tmp_path / "local")
    fake = RecordingVllm()
    rec.admin = fake  # type: ignore[assignment]
    with db.connect() as conn:
        store.register(conn, "r0", "http://replica")
    return rec, fake


def test_reconciler_loads_routes_unloads_then_acknowledges(db, tmp_path):
    a, ha = adapter(tmp_path / "src", "a", 1)
    b, hb = adapter(tmp_path / "src", "b", 2)
    rec, fake = recording_reconciler(db, tmp_path)
    with db.connect() as conn:
        g1 = store.publish(conn, str(a), ha, "single", None)
    assert rec.reconcile_once()
    g2_seen: list[object] = []
    with db.connect() as conn:
        g2 = store.publish(conn, str(b), hb, "single", None)

    original_unload = fake.unload

    def unload_and_look(name: str) -> None:  # when the old name goes, routing already points at the new one
        with psycopg.connect(db.url) as c:
            g2_seen.append(c.execute("SELECT serving_names, acked_generation FROM replicas").fetchone())
        original_unload(name)

    fake.unload = unload_and_look  # type: ignore[method-assign]
    assert rec.reconcile_once()
    assert fake.calls == [("load", g1.name), ("load", g2.name), ("unload", g1.name)]
    assert g2_seen == [([g2.name], g1.generation)]  # routed to the new name, not yet acknowledged
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == [g2.name]
    with db.connect() as conn:
        (r0,) = store.replicas(conn)
    assert (r0.routable, r0.acked_generation, r0.serving_sha256) == (True, g2.generation, hb)
    fake.healthy_ = False
    assert not rec.reconcile_once()
    with db.connect() as conn:
        assert not store.replicas(conn)[0].routable


def test_a_corrupted_copy_is_refused(db, tmp_path):
    a, _ = adapter(tmp_path / "src", "a", 1)
    rec, fake = recording_reconciler(db, tmp_path)
    with db.connect() as conn:
        store.publish(conn, str(a), "0" * 64, "single", None)  # the published hash is not the files'
    with pytest.raises(OSError, match="content hash"):
        rec.reconcile_once()
    assert not (tmp_path / "local").exists() or not any((tmp_path / "local").iterdir())
    assert fake.calls == []  # nothing loaded


def routing_table(root: Path, shards: dict[int, int]) -> tuple[Path, str]:
    """A routing table over tiny adapters (shard → rank), built by the product's materialiser."""
    from shards import materialise

    parts = {}
    for k, r in shards.items():
        d, h = adapter(root / "parts", f"shard-{k}", r)
        parts[k] = materialise.Materialised(d, h, (0,), r)
    m = materialise.routing(parts, root / "served", "routing")
    return m.path, m.sha256


def test_a_routing_table_is_hashed_as_a_whole_and_its_parts_are_checked(tmp_path):
    from shards import served

    path, sha = routing_table(tmp_path, {0: 1, 2: 2})
    assert served.served_sha256(path) == sha and path.name == f"routing-{sha[:12]}"
    assert [(p.key, p.path.name) for p in served.parts(path)] == [("s0", "shard-00"), ("s2", "shard-02")]
    _, sha2 = routing_table(tmp_path / "again", {0: 1, 2: 2})  # same content, same hash
    other, sha3 = routing_table(tmp_path / "other", {0: 1, 2: 4})
    assert sha2 == sha and sha3 != sha
    weights = path / "shard-02" / "adapter_model.safetensors"
    weights.write_bytes((other / "shard-02" / "adapter_model.safetensors").read_bytes())  # swap a part's weights
    with pytest.raises(ValueError, match="shard 2"):
        served.served_sha256(path)


def test_the_reconciler_serves_every_part_of_a_routing_table_and_swaps_them_all(db, tmp_path):
    table, ht = routing_table(tmp_path / "t", {0: 1, 1: 2})
    single, hs = adapter(tmp_path / "src", "single", 1)
    rec, fake = recording_reconciler(db, tmp_path)
    with db.connect() as conn:
        g1 = store.publish(conn, str(table), ht, "routing", None)
    assert rec.reconcile_once()
    names = [f"{g1.name}-s0", f"{g1.name}-s1"]
    assert fake.calls == [("load", n) for n in names] and fake.loaded == set(names)
    with db.connect() as conn:
        (r0,) = store.replicas(conn)
    assert r0.serving_names == tuple(names) and r0.routable and r0.serving_sha256 == ht
    assert fake.paths[names[1]] == tmp_path / "local" / g1.name / "shard-01"  # the replica's own copy
    assert rec.reconcile_once() and len(fake.calls) == 2  # nothing to do: no reload
    with db.connect() as conn:
        g2 = store.publish(conn, str(single), hs, "single", None)
    assert rec.reconcile_once()
    assert fake.calls[2:] == [("load", g2.name), ("unload", names[0]), ("unload", names[1])]
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == [g2.name]


def test_a_routing_table_with_a_tampered_part_is_refused(db, tmp_path):
    table, ht = routing_table(tmp_path / "t", {0: 1, 1: 2})
    (table / "shard-01" / "adapter_config.json").write_text('{"r": 2, "lora_alpha": 8, "target_modules": ["q_proj"]}')
    rec, fake = recording_reconciler(db, tmp_path)
    with db.connect() as conn:
        store.publish(conn, str(table), ht, "routing", None)
    with pytest.raises(OSError, match="content hash"):
        rec.reconcile_once()
    assert fake.calls == []
