"""Shapes of a decoder from its config alone: parameter counts, aligned widths, shrunk configs and
the budget solver that turns a parameter count into widths. No weights needed, so the pruned
shapes of a 32B teacher can be planned on a laptop."""

from __future__ import annotations

import copy
import math


class ShapeError(ValueError):
    """Widths that no config of this architecture can hold; the message names the rule."""


def parameter_count(config) -> int:
    """Parameters of a Qwen3 / Qwen2 / Llama decoder from its config alone (no weights), so the
    pruned shapes of a 32B teacher can be planned on a laptop."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
    attention = 2 * h * q + 2 * h * kv + (q + 2 * kv if bias else 0)
    if config.model_type == "qwen3":
        attention += 2 * hd  # q_norm, k_norm
    per_layer = attention + 3 * h * config.intermediate_size + 2 * h
    embeddings = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return embeddings + layers * per_layer + h


BUDGET_AXES = ("hidden", "ffn", "heads", "kv_heads")
CONFIG_FIELD = {"hidden": "hidden_size", "ffn": "intermediate_size", "heads": "num_attention_heads",
                 "kv_heads": "num_key_value_heads"}


def alignment(size: int) -> int:
    """The multiple a pruned width is rounded to: 256 for big widths (llama.cpp's k-quant blocks
    hold 256 values per row, so Q4_K needs rows that are multiples of 256), 32 or 8 below."""
    return 256 if size >= 2048 else 32 if size >= 256 else 8


def needs_divisible_hidden(config) -> bool:
    """Whether the architecture's config demands hidden_size % num_attention_heads == 0 (Llama's
    does, even with an explicit head_dim; Qwen3's does not)."""
    return config.model_type in ("llama", "qwen2")


def hidden_step(config, full: int, heads: int) -> int:
    """What a pruned hidden size must be a multiple of: the alignment, and the head count where the
    config demands it (lcm: 9 heads and 32-alignment give 288)."""
    step = alignment(full)
    return math.lcm(step, heads) if needs_divisible_hidden(config) else step


def shape_problems(config, sizes: dict[str, int]) -> list[str]:
    """Everything wrong with pruning `config` to `sizes` (keys of BUDGET_AXES), checked before any
    surgery: whole KV groups, sizes within the model's, and the config class's own validation."""
    new = {axis: sizes.get(axis, getattr(config, CONFIG_FIELD[axis])) for axis in CONFIG_FIELD}
    problems = [f"{axis} {size} is not between 1 and the model's {getattr(config, CONFIG_FIELD[axis])}"
                for axis, size in new.items() if not 1 <= size <= getattr(config, CONFIG_FIELD[axis])]
    if new["heads"] % new["kv_heads"]:
        problems.append(f"{new['heads']} query heads do not fill {new['kv_heads']} KV groups evenly")
    elif new["heads"] // new["kv_heads"] > config.num_attention_heads // config.num_key_value_heads:
        problems.append(f"{new['heads'] // new['kv_heads']} query heads per KV group: the model has only "
                        f"{config.num_attention_heads // config.num_key_value_heads}")
    if needs_divisible_hidden(config) and new["hidden"] % new["heads"]:
        problems.append(f"hidden {new['hidden']} is not a multiple of the {new['heads']} query heads, which a "
                        f"{config.model_type} config requires")
    if not problems:
        try:  # the architecture's own rules, whatever else they are
            type(config)(**shrunk_config(config, sizes).to_dict())
        except (ValueError, TypeError) as exc:
            problems.append(f"{type(config).__name__} refuses these sizes: {str(exc).strip().splitlines()[-1]}")
    return problems


def check_shape(config, sizes: dict[str, int]) -> None:
    problems = shape_problems(config, sizes)
    if problems:
        raise ShapeError("; ".join(problems))


def parse_count(text: str | float | int) -> int:
    """A parameter count written as 3e9, 3B, 3.02B, 800M, 250k or 123456."""
    if isinstance(text, (int, float)):
        return int(text)
    t = text.strip().upper().replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if scale != 1 else t) * scale)
    except ValueError:
        raise ValueError(f"not a parameter count: {text!r} (write e.g. 3e9, 3B or 800M)") from None


def shrunk_config(config, sizes: dict[str, int]):
    """A copy of `config` with the given widths (keys of BUDGET_AXES) and, optionally, layers."""
    new = copy.deepcopy(config)
    for axis, size in sizes.items():
        if axis == "layers":
            new.num_hidden_layers = size
            if getattr(new, "layer_types", None):
                new.layer_types = new.layer_types[:size]
        else:
            setattr(new, CONFIG_FIELD[axis], size)
    return new


def solve_budget(config, params: int, axes: tuple[str, ...] = ("hidden", "ffn")) -> dict:
    """Widths that bring `config` to at most `params` parameters: one keep ratio shared by the
    chosen axes (the largest that fits), each size rounded down to its alignment (heads to a
    multiple of the KV heads). Returns {"sizes": {axis: size}, "params": count, "ratio": r}."""
    unknown = set(axes) - set(BUDGET_AXES)
    if unknown or not axes:
        raise ValueError(f"budget axes must come from {', '.join(BUDGET_AXES)}; got {', '.join(axes) or 'none'}")
    if parameter_count(config) <= params:
        return {"sizes": {}, "params": parameter_count(config), "ratio": 1.0}
    full = {axis: getattr(config, CONFIG_FIELD[axis]) for axis in axes}

    def sizes_at(ratio: float) -> dict[str, int]:
        sizes = {}
        kv = config.num_key_value_heads
        if "kv_heads" in axes:
            kv = sizes["kv_heads"] = max(1, int(full["kv_heads"] * ratio))
        if "heads" in axes:
            group = config.num_attention_heads // config.num_key_value_heads
            per_group = max(1, min(group, int(full["heads"] * ratio) // kv))
            sizes["heads"] = per_group * kv
        elif "kv_heads" in axes:
            sizes["heads"] = kv * (config.num_attention_heads // config.num_key_value_heads)
        if "ffn" in axes:
            step = alignment(full["ffn"])
            sizes["ffn"] = max(step, int(full["ffn"] * ratio) // step * step)
        if "hidden" in axes:
            step = hidden_step(config, full["hidden"], sizes.get("heads", config.num_attention_heads))
            sizes["hidden"] = max(step, int(full["hidden"] * ratio) // step * step)
        return sizes

    for k in range(1000, 0, -1):  # ratios 0.999 .. 0.001: the first that fits is the largest
        sizes = sizes_at(k / 1000)
        count = parameter_count(shrunk_config(config, sizes))
        if count <= params:
            return {"sizes": sizes, "params": count, "ratio": k / 1000}
    raise ValueError(f"{params:,} parameters cannot be reached by shrinking {', '.join(axes)} alone "
                     f"(the smallest shapes still have {count:,}); remove layers or add axes")
