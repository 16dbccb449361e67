# syntax=docker/dockerfile:1
# The GPU serving image: vLLM's OpenAI-compatible server, the production release Lethe pins
# (pyproject's `gpu` extra: vllm==0.32.0), run as a non-root user with runtime LoRA updates on.
# The reconciler sidecar (Lethe image) runs next to it in the same pod and is the only caller of
# the adapter-admin endpoints (/v1/load_lora_adapter), over localhost.
#
#   docker build -f deploy/docker/vllm-gpu.Dockerfile -t ghcr.io/lethe/vllm-gpu:0.32.0 .
#
# NOT BUILT HERE: this machine and CI have no Docker engine. tests/deploy/test_manifests.py lints
# this file with checkov's dockerfile framework.

# Pinned by tag. In a release pipeline pin the digest too (FROM vllm/vllm-openai:v0.32.0@sha256:...);
# it cannot be resolved without registry access from this machine.
FROM vllm/vllm-openai:v0.32.0

# Same uid/gid as the Lethe image, so both containers of a vLLM pod share the adapters emptyDir.
RUN groupadd --gid 10001 lethe \
    && useradd --uid 10001 --gid 10001 --home-dir /home/lethe --create-home --shell /usr/sbin/nologin lethe

# HOME (caches of Hugging Face, torch, triton and vLLM) and /tmp are emptyDir volumes under
# Kubernetes (read-only root filesystem). Models come from a mounted directory, never the hub.
ENV VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    HOME=/home/lethe \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
WORKDIR /home/lethe
EXPOSE 8001
# For plain `docker run` only; Kubernetes uses the probes in deploy/k8s. Port 8001 as deploy/k8s runs it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8001/health', timeout=4)"]
ENTRYPOINT ["vllm", "serve"]
