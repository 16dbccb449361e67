import pytest

from shards.blocks import block_layers, block_of_layer, block_of_param, layer_of

# (parameter name, layer) — the substring pitfall: "layers.1" must not match layers 10–19.
NAME_CASES = [
    ("base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight", 1),
    ("base_model.model.model.layers.10.self_attn.q_proj.lora_A.default.weight", 10),
    ("base_model.model.model.layers.11.mlp.down_proj.lora_B.default.weight", 11),
    ("model.layers.0.mlp.up_proj.weight", 0),
    ("layers.7.self_attn.o_proj.lora_B.weight", 7),
    ("base_model.model.model.embed_tokens.weight", None),
    ("base_model.model.lm_head.weight", None),
    ("base_model.model.model.norm.weight", None),
    ("model.sublayers.3.weight", None),
    ("model.layers.x.weight", None),
]


@pytest.mark.parametrize(("name", "layer"), NAME_CASES)
def test_layer_of_matches_exactly(name, layer):
    assert layer_of(name) == layer


@pytest.mark.parametrize(
    ("num_layers", "num_blocks", "block", "layers"),
    [
        (8, 4, 0, [7, 6]),
        (8, 4, 3, [1, 0]),
        (12, 6, 5, [1, 0]),
        (12, 6, 0, [11, 10]),
        (12, 4, 1, [8, 7, 6]),
        (4, 4, 2, [1]),
        (6, 1, 0, [5, 4, 3, 2, 1, 0]),
        (18, 4, 0, [17, 16, 15, 14]),  # Gemma 3 270M: 4, 5, 5, 4 layers (design.md §8)
        (18, 4, 1, [13, 12, 11, 10, 9]),
        (18, 4, 2, [8, 7, 6, 5, 4]),
        (18, 4, 3, [3, 2, 1, 0]),
        (8, 3, 1, [5, 4, 3]),
    ],
)
def test_block_layers_count_from_the_top(num_layers, num_blocks, block, layers):
    assert block_layers(num_layers, num_blocks, block) == layers
    assert all(block_of_layer(num_layers, num_blocks, x) == block for x in layers)


def test_blocks_partition_the_layers():
    for n, b in [(8, 4), (12, 6), (12, 3), (4, 1), (18, 4), (26, 4), (7, 7), (30, 8)]:
        all_layers = [x for i in range(b) for x in block_layers(n, b, i)]
        assert sorted(all_layers) == list(range(n))


def test_block_of_param_with_twelve_layers_keeps_layer_1_apart_from_10_and_11():
    name = "base_model.model.model.layers.{}.self_attn.v_proj.lora_A.default.weight"
    assert block_of_param(name.format(1), 12, 6) == 5
    assert block_of_param(name.format(10), 12, 6) == block_of_param(name.format(11), 12, 6) == 0
    assert block_of_param("base_model.model.lm_head.weight", 12, 6) is None


@pytest.mark.parametrize(("n", "b", "block"), [(3, 4, 0), (8, 0, 0), (8, 4, 4), (8, 4, -1)])
def test_invalid_splits_are_rejected(n, b, block):
    with pytest.raises(ValueError):
        block_layers(n, b, block)
