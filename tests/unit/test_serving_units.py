"""Small pure pieces of serving and verification."""

from __future__ import annotations

import os

import pytest

from service.config import ServingSpec, Settings
from service.serve import settings_env
from service.serving.vllm import lora_rank_slot
from service.verify.probes import rouge_l
from shards.specs import S3TSpec, TrainConfig


@pytest.mark.parametrize(("rank", "slot"), [(1, 1), (2, 8), (8, 8), (16, 16), (17, 32), (64, 64), (65, 128)])
def test_lora_rank_slot_is_the_smallest_value_vllm_accepts(rank, slot):
    assert lora_rank_slot(rank) == slot


def test_lora_rank_slot_rejects_ranks_vllm_cannot_hold():
    with pytest.raises(ValueError):
        lora_rank_slot(513)


def test_rouge_l():
    assert rouge_l("a b c d", "a b c d") == 1.0
    assert rouge_l("", "a") == 0.0 and rouge_l("x y", "a b") == 0.0
    # LCS "a c" of 3 and 2 tokens: P = 2/3, R = 1, F1 = 0.8
    assert rouge_l("a b c", "a c") == pytest.approx(0.8)


def test_settings_reach_a_child_process_unchanged(monkeypatch, tmp_path):
    s = Settings(
        var_dir=tmp_path,
        s3t=S3TSpec(shards=3, slices=4, budget=1),
        train=TrainConfig(epochs=7),
        serving=ServingSpec(replicas=3, ack_timeout_seconds=5, aggregation="routing"),
    )
    for k in list(os.environ):
        if k.startswith("LETHE_"):
            monkeypatch.delenv(k)
    for k, v in settings_env(s).items():
        monkeypatch.setenv(k, v)
    child = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (child.s3t, child.train, child.serving, child.var_dir) == (s.s3t, s.train, s.serving, tmp_path.resolve())


def test_verbmem_reports_a_replica_it_cannot_reach_instead_of_failing():
    import socket

    from service.verify.probes import verbmem

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = verbmem([("replica-9", f"http://127.0.0.1:{port}", ("x",))], ["Ada lives in Oslo."], ["Bo lives in Rome."])
    assert out["unreachable"] == ["replica-9"] and out["rouge_l_by_replica"] == {}


def test_a_routing_table_sends_a_key_to_the_same_shard_and_spreads_keys_evenly():
    from collections import Counter

    from shards.served import pick

    names = ("g7-s0", "g7-s1", "g7-s3")
    assert pick(("only",), "anything") == "only"
    assert all(pick(names, f"k{i}") == pick(list(names), f"k{i}") for i in range(50))  # stable, any sequence type
    counts = Counter(pick(names, f"prompt {i}") for i in range(3000))
    assert set(counts) == set(names) and min(counts.values()) > 900  # ≈ 1000 each


def test_the_routing_key_is_the_user_else_the_prompt_or_messages():
    from service.gateway.forward import routing_key

    assert routing_key({"user": "u1", "prompt": "a"}) == routing_key({"user": "u1", "prompt": "b"})
    assert routing_key({"prompt": "a"}) == routing_key({"prompt": "a", "max_tokens": 3})
    assert routing_key({"prompt": "a"}) != routing_key({"prompt": "b"})
    chat = [{"role": "user", "content": "hi"}]
    assert routing_key({"messages": chat}) != routing_key({"messages": [{"role": "user", "content": "ho"}]})
    assert routing_key({"user": "", "prompt": "a"}) == routing_key({"prompt": "a"})
