"""A real vLLM CPU engine serves the locally built model and S3T adapters exactly as transformers does.

One engine (LoRA enabled) is shared by the tests of this module: starting one costs ~30 s here.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from service.core.identity import content_hash
from shards import corpus, materialise, train
from shards.specs import TrainConfig

pytestmark = pytest.mark.slow
PROMPTS = ["The personal code of Kalo Viremu is", "Bravo Tresi was born in", "As a potter, Zeamo Kru"]


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    llm = LLM(
        model=str(tiny_model_path),
        dtype="float32",
        max_model_len=128,
        seed=0,
        enforce_eager=True,
        enable_lora=True,
        max_lora_rank=16,
        max_loras=2,
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()


def test_vllm_cpu_engine_generates_with_the_built_model(engine, tiny_model_path):
    from vllm import SamplingParams

    outs = engine.generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0, logprobs=1))
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = LlamaForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    for prompt, out in zip(PROMPTS, outs, strict=True):
        gen = out.outputs[0]
        assert out.prompt_token_ids == tok(prompt)["input_ids"]  # same tokenizer, BOS included
        assert len(gen.token_ids) >= 1 and gen.text.strip()
        # The first generated token is transformers' argmax, with the same log-probability.
        with torch.no_grad():
            logits = model(torch.tensor([out.prompt_token_ids])).logits[0, -1]
        logprobs = torch.log_softmax(logits, -1)
        first = gen.token_ids[0]
        assert first == int(logits.argmax())
        assert gen.logprobs[0][first].logprob == pytest.approx(float(logprobs[first]), abs=1e-3)


@pytest.fixture(scope="module")
def adapters(tiny_model_path, tmp_path_factory):
    """A truncated S3T adapter (prefix 2 of 4), a full rsLoRA one, and their merge (rank 16)."""
    root = tmp_path_factory.mktemp("adapters")
    c = corpus.generate(seed=9, trained=16, holdout=1)
    slices: dict[int, list] = {}
    for i, p in enumerate(c.trained):
        slices.setdefault(i % 4, []).extend(
            train.TrainRecord(r["id"], r["text"], content_hash(r["text"])) for r in c.records([p])
        )
    out = {}
    for k, cfg in enumerate(
        [TrainConfig(r=8, alpha=16, epochs=2), TrainConfig(r=8, alpha=16, epochs=2, use_rslora=True)]
    ):
        train.train_unit(tiny_model_path, train.UnitSpec(k, 0, (0, 1, 2, 3)), slices, cfg, root, progress=False)
        final = train.stage_dir(root / train.UnitSpec(k, 0, (0, 1, 2, 3)).dir_name(), 3)
        out[k] = materialise.truncate(final, 2 if k == 0 else 4, 8, 4, root / "served", f"s{k}").path
    out["merged"] = materialise.merge([out[0], out[1]], root / "served", "merged").path
    return out


def hf_logprobs(tiny_model_path, adapter, ids, start):
    """log p(ids[t] | ids[:t]) for t ≥ start, computed by transformers + peft."""
    model = train.load_peft(tiny_model_path, adapter)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return logprobs[start - 1 :].tolist()


@pytest.mark.parametrize("which", [0, 1, "merged"])
def test_vllm_logprobs_with_s3t_adapters_match_transformers_and_peft(engine, adapters, tiny_model_path, which):
    """Scaling (alpha, rsLoRA), module names, truncated layers and merged ranks survive the trip:
    the prompt's log-probabilities (what the probes read) and the greedy continuation's, for a
    batch of three LoRA requests. Unpatched, vLLM CPU 0.32.0 kills its engine on prompt
    log-probabilities of a batched LoRA request; Lethe's plugin (service/serving/vllm_plugin.py,
    loaded by vLLM through its entry point) fixes that."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    lora_id = {0: 1, 1: 2, "merged": 3}[which]
    request = LoRARequest(f"adapter-{which}", lora_id, str(adapters[which]))
    params = SamplingParams(max_tokens=4, temperature=0, logprobs=1, ignore_eos=True, prompt_logprobs=1)
    out = engine.generate(PROMPTS, params, lora_request=request)
    base_out = engine.generate(PROMPTS, params)
    differs = False
    for o, b in zip(out, base_out, strict=True):
        gen = o.outputs[0]
        ids = list(o.prompt_token_ids) + list(gen.token_ids)
        served = [gen.logprobs[t][tok].logprob for t, tok in enumerate(gen.token_ids)]
        expected = hf_logprobs(tiny_model_path, adapters[which], ids, len(o.prompt_token_ids))
        assert served == pytest.approx(expected, abs=2e-3)
        prompt = [o.prompt_logprobs[t][tok].logprob for t, tok in enumerate(o.prompt_token_ids) if t]
        assert prompt == pytest.approx(hf_logprobs(tiny_model_path, adapters[which], ids, 1)[: len(prompt)], abs=2e-3)
        base_gen = b.outputs[0]
        base = [base_gen.logprobs[t][tok].logprob for t, tok in enumerate(base_gen.token_ids)]
        differs |= gen.token_ids != base_gen.token_ids or any(
            abs(x - y) > 1e-2 for x, y in zip(served, base, strict=True)
        )
    assert differs  # the adapter is really applied


def test_an_idle_vllm_process_waits_on_its_socket_instead_of_spinning_on_shared_cores(engine):
    """vLLM 0.32 spins (sched_yield) for 1 s after each message on its shared-memory queue; on the
    CPU cores the replicas share, that starved the other replica's adapter load. Lethe's plugin
    (loaded with the engine) cuts the spin to LETHE_VLLM_SPIN_SECONDS: a reader idle for longer
    parks on its socket, a recent one still spins."""
    import time
    import uuid

    import zmq
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    from service.serving import vllm_plugin

    assert SpinCondition._lethe_spin == vllm_plugin.DEFAULT_SPIN_SECONDS
    ctx = zmq.Context()
    address = f"inproc://lethe-spin-{uuid.uuid4().hex}"
    writer = SpinCondition(False, ctx, address)
    reader = SpinCondition(True, ctx, address)
    try:
        reader.last_read = time.monotonic() - 0.5  # idle for 0.5 s: within vLLM's 1 s spin
        t = time.monotonic()
        reader.wait(timeout_ms=300)
        assert time.monotonic() - t >= 0.25  # parked until the timeout, not spinning back at once
        reader.record_read()
        t = time.monotonic()
        reader.wait(timeout_ms=300)
        assert time.monotonic() - t < 0.2  # just read: still on the fast path
    finally:
        for c in (writer, reader):
            for s in (c.local_notify_socket, c.read_cancel_socket, c.write_cancel_socket):
                if s is not None:
                    s.close(0)
        ctx.term()
