"""Which layers form which S3T block, and which parameter belongs to which layer.

Block ``i`` counts from the top: with N layers in blocks of n, block i holds layers
N−1−(i·n+j) for j < n. Layers are matched exactly by index (``.layers.<k>.``), never by
substring: the reference code's ``"layers.1" in name`` also matches layers 10–19, which
silently trains earlier blocks and breaks exactness (design.md §2).
"""

from __future__ import annotations

import re

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_of(param_name: str) -> int | None:
    """The transformer layer index a parameter belongs to, or None (embeddings, final norm, head)."""
    m = _LAYER.search(param_name)
    return int(m.group(1)) if m else None


def block_layers(num_layers: int, num_blocks: int, block: int) -> list[int]:
    """Layers of ``block`` (0 = top), highest first."""
    if num_blocks <= 0 or num_layers % num_blocks:
        raise ValueError(f"{num_layers} layers cannot be split into {num_blocks} equal blocks")
    if not 0 <= block < num_blocks:
        raise ValueError(f"block {block} out of range 0..{num_blocks - 1}")
    n = num_layers // num_blocks
    return [num_layers - 1 - (block * n + j) for j in range(n)]


def block_of_layer(num_layers: int, num_blocks: int, layer: int) -> int:
    """The block (0 = top) that holds ``layer``."""
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} out of range 0..{num_layers - 1}")
    block_layers(num_layers, num_blocks, 0)  # validates the split
    return (num_layers - 1 - layer) // (num_layers // num_blocks)


def block_of_param(param_name: str, num_layers: int, num_blocks: int) -> int | None:
    layer = layer_of(param_name)
    return None if layer is None else block_of_layer(num_layers, num_blocks, layer)
