"""A vLLM OpenAI-compatible server: its internal admin client and, locally, its process.

The admin endpoints (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``) need
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and live only on the replica's internal address; the
gateway never forwards to them. The same command line serves on GPUs with the ``vllm`` wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

BASE_NAME = "base"  # the served-model-name of the base model on every replica
# log-probabilities a request may ask per position: the probes estimate Min-K%++'s moments from
# the top ones (from the top 20, vLLM's default, its record scores were off by up to 0.96 here; 100: 0.34)
MAX_LOGPROBS = 100
# For a base model without a chat template (the local build): the messages' text, one per line,
# so /v1/chat/completions works as a completion of the conversation.
PLAIN_CHAT_TEMPLATE = Path(__file__).with_name("plain_chat.jinja")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for --max-lora-rank


def lora_rank_slot(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that covers ``rank`` (a merged adapter's m·r)."""
    for slot in LORA_RANKS:
        if slot >= rank:
            return slot
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's maximum {LORA_RANKS[-1]}")


class VllmAdmin:
    """Health, adapter listing, load and unload on one replica's internal address."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def healthy(self) -> bool:
        try:
            return self.http.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def adapters(self) -> set[str]:
        resp = self.http.get("/v1/models")
        resp.raise_for_status()
        return {m["id"] for m in resp.json()["data"]} - {BASE_NAME}

    def load(self, name: str, path: Path) -> None:
        resp = self.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        if resp.status_code == 400 and name in self.adapters():  # already loaded (a retried step)
            return
        resp.raise_for_status()

    def unload(self, name: str) -> None:
        resp = self.http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if resp.status_code in (400, 404) and name not in self.adapters():  # already gone
            return
        resp.raise_for_status()


class VllmProcess:
    """``python -m vllm.entrypoints.openai.api_server`` on loopback, LoRA enabled, runtime updates on."""

    def __init__(
        self,
        model_dir: Path,
        port: int,
        *,
        max_lora_rank: int,
        max_loras: int = 2,
        max_model_len: int = 256,
        log_path: Path | None = None,
    ) -> None:
        from shards.modelinfo import profile

        self.model_dir, self.port, self.log_path = model_dir, port, log_path
        model = profile(model_dir)  # the weights' dtype (bf16 for Gemma), its context, its chat template
        self.args = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            BASE_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            model.dtype,
            "--max-model-len",
            str(min(max_model_len, model.context_length)),
            "--enforce-eager",
            "--enable-lora",
            "--max-lora-rank",
            str(lora_rank_slot(max_lora_rank)),
            "--max-loras",
            str(max_loras),
            "--seed",
            "0",
            "--disable-uvicorn-access-log",
            "--max-logprobs",
            str(MAX_LOGPROBS),
        ]
        if not model.has_chat_template:
            self.args += ["--chat-template", str(PLAIN_CHAT_TEMPLATE)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default (4) is more than a small box needs
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # its own process group: a stop reaches the engine's worker processes too
        self.proc = subprocess.Popen(self.args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 300.0) -> None:
        admin = VllmAdmin(self.url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"vLLM on port {self.port} exited (log: {self.log_path})")
                if admin.healthy():
                    return
                time.sleep(0.5)
            raise TimeoutError(f"vLLM on port {self.port} not ready after {timeout:.0f} s (log: {self.log_path})")
        finally:
            admin.close()

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, for tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
