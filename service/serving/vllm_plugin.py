"""A vLLM general plugin (entry point ``vllm.general_plugins``, loaded by every vLLM process) that
makes prompt log-probabilities of LoRA requests correct on vLLM 0.32's CPU backend.

vLLM scores a request's prompt by running the LoRA-wrapped logits processor on that request's
prompt rows (one per token), but the LoRA logits path picks adapters with the per-sequence
sampler mapping: with more than one sequence in the batch the shapes disagree and the engine
dies (an einsum error); with one they broadcast. Upstream: vllm-project/vllm#16668 and #51594
(fixed for the GPU runner by #51597). Here the logits path gets the per-token mapping of the rows
it is called with: their offset in the step's hidden states, looked up in the token mapping.
Other versions are left alone (the patch names 0.32's internals).

It also shortens how long an idle vLLM process spins on its shared-memory message queue after a
read (vLLM: 1 s of ``sched_yield``; here ``LETHE_VLLM_SPIN_SECONDS``, default 0.05, then it waits
on its socket). On a GPU host the spinning cores are spare; here the replicas' engines and
workers share a few CPU cores with each other and with the model: after every message (a
request, an adapter load) each spun for a second, and a rollout's second replica waited that
long for a core to load its adapter (acknowledge ≈ 1.05 s against 0.1 s). A step of a busy
engine reads every few milliseconds, so it stays on the spinning path.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Any

PATCHED_VERSION = "0.32.0"
SPIN_ENV = "LETHE_VLLM_SPIN_SECONDS"
DEFAULT_SPIN_SECONDS = 0.05
_BATCH: contextvars.ContextVar[Any] = contextvars.ContextVar("lethe_prompt_logprob_batch", default=None)
log = logging.getLogger(__name__)


def register() -> None:
    import vllm

    if vllm.__version__ != PATCHED_VERSION:
        log.warning(
            "lethe vLLM plugin: vLLM %s is not %s; prompt log-probabilities left unpatched",
            vllm.__version__,
            PATCHED_VERSION,
        )
        return
    _patch_prompt_logprobs()
    _patch_idle_spin(float(os.environ.get(SPIN_ENV, DEFAULT_SPIN_SECONDS)))


def _patch_idle_spin(seconds: float) -> None:
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    if getattr(SpinCondition, "_lethe_spin", None) is not None:
        return
    wait = SpinCondition.wait

    # patched at the call, not the constructor: a queue made before the plugin loaded is covered
    def short_spin_wait(self: Any, timeout_ms: int | None = None) -> None:
        if getattr(self, "busy_loop_s", 0) > seconds:
            self.busy_loop_s = seconds
        wait(self, timeout_ms)

    SpinCondition.wait = short_spin_wait  # type: ignore[method-assign]
    SpinCondition._lethe_spin = seconds  # type: ignore[attr-defined]


def _patch_prompt_logprobs() -> None:
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_lethe_prompt_logprobs", False):  # plugins may load twice in a process
        return
    scores = GPUModelRunner._get_prompt_logprobs_dict
    logits = PunicaWrapperCPU.add_lora_logits

    def _get_prompt_logprobs_dict(self: Any, hidden_states: Any, num_scheduled_tokens: Any) -> Any:
        token = _BATCH.set(hidden_states)
        try:
            return scores(self, hidden_states, num_scheduled_tokens)
        finally:
            _BATCH.reset(token)

    def add_lora_logits(
        self: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any, scale: Any, **kwargs: Any
    ) -> Any:
        batch = _BATCH.get()
        rows = x.view(-1, x.shape[-1])
        if batch is None or rows.size(0) == self.sampler_indices.numel():
            return logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, **kwargs)
        return _add_lora_logits(
            y,
            rows,
            lora_a_stacked,
            lora_b_stacked,
            scale,
            self.token_lora_indices[_row_offset(rows, batch) :][: rows.size(0)],
        )

    GPUModelRunner._get_prompt_logprobs_dict = _get_prompt_logprobs_dict  # type: ignore[method-assign]
    PunicaWrapperCPU.add_lora_logits = add_lora_logits  # type: ignore[method-assign]
    GPUModelRunner._lethe_prompt_logprobs = True  # type: ignore[attr-defined]


def _row_offset(rows: Any, batch: Any) -> int:
    """Where the ``rows`` view starts in the step's ``batch`` of hidden states."""
    stride = batch.stride(0) * batch.element_size()
    offset, rest = divmod(rows.data_ptr() - batch.data_ptr(), stride)
    if rest or not 0 <= offset <= batch.size(0) - rows.size(0):
        raise RuntimeError("prompt log-probability rows are not a slice of the step's hidden states")
    return int(offset)


def _add_lora_logits(y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any, scale: Any, indices: Any) -> None:
    """vLLM's CPU ``add_lora_logits`` with one adapter index per row instead of per sequence."""
    import torch
    from vllm.lora.ops.torch_ops import bgmv_expand, bgmv_shrink

    out = y.view(-1, y.shape[-1])
    buffer = torch.zeros((x.size(0), lora_b_stacked.size(-1)), dtype=torch.float32, device=x.device)
    bgmv_shrink(x, lora_a_stacked, buffer, indices, scale)
    bgmv_expand(buffer, lora_b_stacked, out, indices, add_inputs=True)
