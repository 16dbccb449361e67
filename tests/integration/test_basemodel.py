"""The base-model build is deterministic by seed and cached by spec."""

import json

import pytest
from transformers import AutoTokenizer, LlamaConfig

from shards import basemodel
from shards.specs import BaseModelSpec

TINY = BaseModelSpec(
    hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2, vocab_size=400, pretrain_steps=12, batch_size=8
)


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = basemodel.build(TINY, tmp_path / "a", progress=False)
    b = basemodel.build(TINY, tmp_path / "b", progress=False)
    assert a.weights_sha256 == b.weights_sha256 == basemodel.weights_sha256(b.path)
    assert (a.path / "tokenizer.json").read_bytes() == (b.path / "tokenizer.json").read_bytes()
    c = basemodel.build(BaseModelSpec(**{**TINY.__dict__, "seed": 1}), tmp_path / "a", progress=False)
    assert c.path != a.path and c.weights_sha256 != a.weights_sha256
    again = basemodel.build(TINY, tmp_path / "a", progress=False)
    assert again.reused and again.weights_sha256 == a.weights_sha256


@pytest.mark.slow
def test_built_directory_is_a_hugging_face_llama(tmp_path):
    m = basemodel.build(TINY, tmp_path, progress=False)
    cfg = LlamaConfig.from_pretrained(m.path)
    assert cfg.hidden_size // cfg.num_attention_heads == 64
    assert cfg.num_hidden_layers == 2 and not cfg.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(m.path)
    ids = tok("Kalo Viremu was born in Avalon.")["input_ids"]
    assert ids[0] == tok.bos_token_id == basemodel.BOS_ID
    assert tok.decode(ids, skip_special_tokens=True) == "Kalo Viremu was born in Avalon."
    assert m.parameters == sum(p.numel() for p in basemodel.LlamaForCausalLM.from_pretrained(m.path).parameters())
    assert json.loads((m.path / basemodel.BUILD_INFO).read_text())["spec"]["seed"] == 0


def test_head_dim_other_than_64_is_rejected():
    with pytest.raises(ValueError, match="head_dim"):
        BaseModelSpec(hidden_size=128, num_heads=8)
