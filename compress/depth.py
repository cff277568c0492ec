"""Layer deletion: remove whole decoder layers and keep a checkpoint that loads and generates.

Deleting layer i of a Hugging Face decoder is more than dropping it from `model.layers`: each
attention module carries `layer_idx`, which indexes the KV cache, and the config carries
`num_hidden_layers` and `layer_types` (which mask each layer uses). If they are not renumbered,
cached generation silently reads the wrong cache slots. `delete_layers` does all of it.

Baseline choices of which layers to delete, from a layer analysis (`compress.analyze`):
- `shortgpt`: the layers with the lowest block influence (1 - cos of input and output).
- `angular`: Gromov et al.'s contiguous block whose input and output are closest in angle.
- `u-shape`: keep the first and last layers, remove the most redundant middle layers.
- `alternate`: every other layer, spread over the depth, never the first or the last (blind).
- `random`: a seeded random choice (blind).
"""

from __future__ import annotations

import random
from pathlib import Path

from torch import nn

from models.load import decoder_layers, layout_of

BASELINES = ("shortgpt", "angular", "u-shape", "alternate", "random")


def delete_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the decoder layers `keep` (in order), renumbering everything that indexes them.
    Works in place and returns the model."""
    layers = decoder_layers(model)
    n = len(layers)
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep must be increasing, distinct layer indices in 0..{n - 1}; got {keep}")
    kept = nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):
        getattr(layer, layout_of(model).attn).layer_idx = new_index  # indexes the KV cache
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_index
    parent_path, _, attr = layout_of(model).layers.rpartition(".")
    parent = model
    for part in filter(None, parent_path.split(".")):
        parent = getattr(parent, part)
    setattr(parent, attr, kept)
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


def save_pruned(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """save_pretrained of the model, its tokenizer and chat template, loadable as is."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def choose_removed(strategy: str, analysis: dict, remove: int, variant: str = "weighted", seed: int = 0) -> list[int]:
    """Which layers a baseline strategy deletes, as sorted layer indices."""
    layers = analysis["layers"]
    n = len(layers)
    if not 0 < remove < n:
        raise ValueError(f"can remove 1..{n - 1} of {n} layers, not {remove}")
    scores = analysis[variant]
    if strategy == "shortgpt":
        order = sorted(range(n), key=lambda k: scores["block_influence"][k])
        return sorted(layers[k] for k in order[:remove])
    if strategy == "angular":
        return _best_block(scores, layers, remove)
    if strategy == "u-shape":
        middle = list(range(1, n - 1))
        if remove > len(middle):
            raise ValueError(f"u-shape keeps the first and last layer: at most {len(middle)} can go")
        order = sorted(middle, key=lambda k: scores["importance"][k])
        return sorted(layers[k] for k in order[:remove])
    if strategy == "alternate":
        return _alternate(layers, remove)
    if strategy == "random":
        return sorted(random.Random(seed).sample(layers, remove))
    raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(BASELINES)}")


def _best_block(scores: dict, layers: list[int], size: int) -> list[int]:
    # States are listed in depth order; layer k maps its input state to its output state.
    names = scores["states"]
    index = {name: i for i, name in enumerate(names)}
    angle = scores["pair_angle"]
    best, best_start = None, None
    for k in range(len(layers) - size + 1):
        if layers[k + size - 1] - layers[k] != size - 1:
            continue
        first, last = layers[k], layers[k + size - 1]
        start_state = index.get(f"input.{first}", index.get(f"output.{first - 1}"))
        value = angle[start_state][index[f"output.{last}"]]
        if best is None or value < best:
            best, best_start = value, k
    if best_start is None:
        raise ValueError(f"no {size} contiguous captured layers")
    return layers[best_start:best_start + size]


def _alternate(layers: list[int], remove: int) -> list[int]:
    """Every other layer over the middle of the stack: for half the depth, all odd positions;
    for less, the odd positions spread evenly between the first and the last layer."""
    odd = [layers[k] for k in range(1, len(layers) - 1, 2)]
    if remove > len(odd):
        raise ValueError(f"alternate removes at most {len(odd)} of {len(layers)} layers")
    step = len(odd) / remove
    return sorted(odd[int(i * step)] for i in range(remove))
