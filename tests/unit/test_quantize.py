"""Round-to-nearest group-wise quantization (the comparison bench's 8 and 4 bits): each group
takes at most 2^bits values near its own range, the error shrinks with more bits, and a layer's
shape, dtype and non-decoder modules are left alone."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.bench import quantize


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.sampled_from([4, 8]), st.integers(0, 2**31 - 1))
def test_each_group_holds_at_most_two_to_the_bits_values_within_a_step_of_its_weights(rows, bits, seed):
    w = torch.randn(rows, 256, generator=torch.Generator().manual_seed(seed)) * 0.05
    q = quantize.rtn(w, bits, group=128)
    assert q.shape == w.shape and q.dtype == w.dtype
    for g_w, g_q in zip(w.reshape(rows, 2, 128).unbind(1), q.reshape(rows, 2, 128).unbind(1), strict=True):
        for a, b in zip(g_w, g_q, strict=True):
            assert len(torch.unique(b)) <= 2**bits
            step = (a.max() - a.min()) / (2**bits - 1)
            # half a step inside the grid; the zero point's own rounding can cost the extremes one
            assert float((a - b).abs().max()) <= float(step) + 1e-6


def test_more_bits_less_error_and_sixteen_bits_is_bf16_rounding():
    w = torch.randn(64, 640, generator=torch.Generator().manual_seed(0))
    errors = [float((quantize.rtn(w, b) - w).norm() / w.norm()) for b in (16, 8, 4, 2)]
    assert errors == sorted(errors) and errors[0] > 0
    assert torch.equal(quantize.rtn(w, 16), w.to(torch.bfloat16).float())


def test_only_decoder_linear_layers_are_quantized():
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 128)
            self.layers = torch.nn.ModuleList([torch.nn.Linear(128, 128) for _ in range(2)])
            self.head = torch.nn.Linear(128, 10)

    m = Tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    report = quantize.quantize_(m, 4)
    after = m.state_dict()
    assert report["layers"] == 2 and report["mean_relative_error"] > 0
    assert torch.equal(after["embed.weight"], before["embed.weight"])
    assert torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["layers.0.weight"], before["layers.0.weight"])
