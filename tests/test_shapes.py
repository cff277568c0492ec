"""Pruned shapes are checked against the architecture's rules before any surgery, and the budget
solver only proposes shapes that pass."""

import pytest
from transformers import LlamaConfig, Qwen3Config

from models.shapes import ShapeError, check_shape, parameter_count, shape_problems, solve_budget


def smollm2_like() -> LlamaConfig:
    """SmolLM2-135M's shape: 9 query heads in 3 KV groups, hidden 576, head_dim 64."""
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)


def test_llama_hidden_must_be_a_multiple_of_the_heads():
    config = smollm2_like()
    assert "not a multiple of the 9 query heads" in " ".join(shape_problems(config, {"hidden": 416}))
    assert "not a multiple of the 6 query heads" in " ".join(shape_problems(config, {"heads": 6, "hidden": 448}))
    assert shape_problems(config, {"heads": 6, "hidden": 384}) == []
    with pytest.raises(ShapeError):
        check_shape(config, {"hidden": 416})


def test_heads_keep_whole_kv_groups_and_sizes_stay_within_the_model():
    config = smollm2_like()
    assert "do not fill 3 KV groups" in " ".join(shape_problems(config, {"heads": 7}))
    assert "query heads per KV group" in " ".join(shape_problems(config, {"heads": 12, "kv_heads": 2}))
    assert "between 1 and the model's 1536" in " ".join(shape_problems(config, {"ffn": 2048}))


def test_qwen3_keeps_its_own_rule_set():
    config = Qwen3Config(vocab_size=1000, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64)
    assert shape_problems(config, {"hidden": 416}) == []  # head_dim is explicit: no divisibility rule


@pytest.mark.parametrize("axes", [("hidden", "ffn"), ("hidden", "ffn", "heads"), ("heads", "hidden"), ("ffn",)])
def test_a_budget_on_smollm2_solves_into_a_valid_shape(axes):
    config = smollm2_like()
    solved = solve_budget(config, 90_000_000, axes)
    assert shape_problems(config, solved["sizes"]) == []
    assert solved["params"] <= 90_000_000 < parameter_count(config)
