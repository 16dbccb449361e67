"""Weight quantization for the unlearning comparison: what a deployment does to a merged model.

Round-to-nearest, group-wise, asymmetric (min-max with a zero point per group of ``group``
input weights), applied to every linear layer of the decoder and dequantized back into the
weights (the forward pass then computes with exactly the values a quantized kernel would). The
embeddings (tied to the output layer in Gemma) stay in 16 bits, as in Zhang et al. (ICLR 2025)
and the RTN baselines of GPTQ/AWQ. 16 bits: bf16 rounding of those same weights.
"""

from __future__ import annotations

import torch

GROUP = 128


@torch.no_grad()
def rtn(weight: torch.Tensor, bits: int, group: int = GROUP) -> torch.Tensor:
    """``weight`` (out × in) quantized to ``bits`` per group of ``group`` inputs and dequantized."""
    if bits >= 16:
        return weight.to(torch.bfloat16).to(weight.dtype)
    out, inp = weight.shape
    g = group if inp % group == 0 else inp
    w = weight.float().reshape(out, inp // g, g)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, levels)
    return ((q - zero) * scale).reshape(out, inp).to(weight.dtype)


@torch.no_grad()
def quantize_(model: torch.nn.Module, bits: int, group: int = GROUP) -> dict[str, float]:
    """Quantize every decoder linear layer of ``model`` in place; the mean relative error made."""
    errors = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            before = module.weight.data
            after = rtn(before, bits, group)
            errors.append(float((after - before).norm() / before.norm().clamp(min=1e-12)))
            module.weight.data = after
    if not errors:
        raise ValueError("no decoder linear layer to quantize")
    return {"layers": len(errors), "mean_relative_error": sum(errors) / len(errors)}
