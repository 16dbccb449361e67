"""Which layers form which S3T block, and which parameter belongs to which layer.

Block ``i`` counts from the top: with N layers in blocks of n, block i holds layers
N−1−(i·n+j) for j < n (uneven splits: ``block_sizes``). Layers are matched exactly by index (``.layers.<k>.``), never by
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


def block_sizes(num_layers: int, num_blocks: int) -> list[int]:
    """Layers per block, top first: as even as possible; when they do not divide, blocks 1..r get
    one more, so the top block (fastest to train) and the bottom one (slowest: its gradient runs
    through everything above) stay the smallest. Gemma's 18 layers in 4 blocks: 4, 5, 5, 4."""
    if num_blocks <= 0 or num_layers < num_blocks:
        raise ValueError(f"{num_layers} layers cannot be split into {num_blocks} non-empty blocks")
    n, extra = divmod(num_layers, num_blocks)
    return [n + (1 <= i <= extra) for i in range(num_blocks)]


def block_layers(num_layers: int, num_blocks: int, block: int) -> list[int]:
    """Layers of ``block`` (0 = top), highest first."""
    sizes = block_sizes(num_layers, num_blocks)
    if not 0 <= block < num_blocks:
        raise ValueError(f"block {block} out of range 0..{num_blocks - 1}")
    top = num_layers - 1 - sum(sizes[:block])
    return [top - j for j in range(sizes[block])]


def block_of_layer(num_layers: int, num_blocks: int, layer: int) -> int:
    """The block (0 = top) that holds ``layer``."""
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} out of range 0..{num_layers - 1}")
    depth = num_layers - 1 - layer  # 0 for the top layer
    for block, size in enumerate(block_sizes(num_layers, num_blocks)):
        if depth < size:
            return block
        depth -= size
    raise AssertionError("unreachable: the sizes add up to num_layers")


def block_of_param(param_name: str, num_layers: int, num_blocks: int) -> int | None:
    layer = layer_of(param_name)
    return None if layer is None else block_of_layer(num_layers, num_blocks, layer)
