"""Layer surgery: delete whole decoder layers of a Hugging Face decoder, for good or for the
length of a block.

Deleting layer i is more than dropping it from `model.layers`: each attention module carries
`layer_idx`, which indexes the KV cache, and the config carries `num_hidden_layers` and
`layer_types` (which mask each layer uses). If they are not renumbered, cached generation
silently reads the wrong cache slots. `delete_layers` does all of it; compress.depth decides
which layers go, compress.guided measures sets of them with `layers_removed`.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from models.load import decoder_layers, layout_of


def _set_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    parent_path, _, attr = layout_of(model).layers.rpartition(".")
    parent = model
    for part in filter(None, parent_path.split(".")):
        parent = getattr(parent, part)
    setattr(parent, attr, layers)


def _number_layers(model: nn.Module, layers, indices: list[int]) -> None:
    attn = layout_of(model).attn
    for index, layer in zip(indices, layers):
        getattr(layer, attn).layer_idx = index  # indexes the KV cache
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = index


def delete_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the decoder layers `keep` (in order), renumbering everything that indexes them.
    Works in place and returns the model."""
    layers = decoder_layers(model)
    n = len(layers)
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep must be increasing, distinct layer indices in 0..{n - 1}; got {keep}")
    kept = nn.ModuleList([layers[i] for i in keep])
    _number_layers(model, kept, list(range(len(keep))))
    _set_layers(model, kept)
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


@contextmanager
def layers_removed(model: nn.Module, removed: list[int]):
    """The model with `removed` layers deleted inside the block and restored after it, without
    copying weights: how the guided search tries thousands of candidate sets on a big teacher."""
    layers = decoder_layers(model)
    config = model.config
    saved = (config.num_hidden_layers, getattr(config, "layer_types", None))
    keep = [i for i in range(len(layers)) if i not in set(removed)]
    delete_layers(model, keep)
    try:
        yield model
    finally:
        _set_layers(model, layers)
        _number_layers(model, layers, list(range(len(layers))))
        config.num_hidden_layers = saved[0]
        if saved[1] is not None:
            config.layer_types = saved[1]
