"""Width pruning: attention heads, KV groups, FFN neurons and hidden channels.

Every layer keeps the same number of heads and neurons (the indices may differ per layer), so the
result is a standard config that transformers, llama.cpp's `qwen3` loader and ONNX builders read:
llama.cpp builds every layer at layer 0's size, so per-layer widths are out of scope.

- heads (grouped-query attention): query heads are removed evenly inside each KV group, so every
  group keeps `heads / kv_heads` query heads; `head_dim`, `q_norm` and `k_norm` stay.
- KV groups: a group's k/v rows go together with all of its query heads.
- FFN neurons: one index set for the rows of gate_proj and up_proj and the columns of down_proj.
- hidden channels: one index set for the whole residual stream: embeddings, lm_head, every
  RMSNorm weight, the inputs of q/k/v/gate/up and the outputs of o/down.

Which indices to keep comes from the capture's importance.safetensors (Minitron importance:
per-sample mean |activation|, L2 over samples; entropy-weighted or not) or from the baselines
(weight magnitude, random): see `importance_scores` and `prune_width`.

    python -m compress.width --model M --importance out/capture --ffn 256 --heads 4 --out DIR

or with a parameter budget instead of sizes (`solve_budget`):

    python -m compress.width --model M --importance out/capture --params 3e9 --out DIR

A depth-pruned student is scored with the capture of the teacher layers it kept: its
pruning_plan.json (or --depth-plan) names them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from compress.depth import kept_layers
from compress.model_flags import add_model_flags, load_options
from compress.stats import VARIANTS
from core.artifacts import IMPORTANCE_FILE, WIDTH_PLAN_FILE, atomic_dir, write_json
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from models.checkpoint import save_model_dir
from models.load import LoadOptions, ModelLoadError, decoder_layers, layer_parts, layout_of, load_model
from models.shapes import BUDGET_AXES, check_shape, parse_count, solve_budget

SOURCES = ("activation", "magnitude", "random")
SIZES = ("heads", "kv_heads", "ffn", "hidden")
PLAN_FILE = WIDTH_PLAN_FILE


@dataclass(frozen=True)
class WidthConfig:
    """Width pruning: the CLI's flags and the pipeline's [width] section: a parameter budget or
    explicit sizes, and what scores the channels (the model, the capture's importance and the
    output folder are not settings: prune_to_width takes them)."""

    params: str | None = field(default=None, metadata={
        "help": "a parameter budget (3e9, 3B, 800M) solved into sizes, instead of sizes"})
    budget_axes: tuple[str, ...] = field(default=("hidden", "ffn"), metadata={
        "help": "widths the budget shrinks", "choices": BUDGET_AXES})
    heads: int | None = field(default=None, metadata={"help": "query heads (a multiple of the KV heads kept)"})
    kv_heads: int | None = field(default=None, metadata={"help": "KV groups, each with all of its query heads"})
    ffn: int | None = field(default=None, metadata={"help": "FFN neurons per layer"})
    hidden: int | None = field(default=None, metadata={"help": "hidden size"})
    source: str = field(default="activation", metadata={
        "help": "what scores channels: the capture's activations, weight magnitude, or random", "choices": SOURCES})
    variant: str = field(default="weighted", metadata={
        "help": "activation scores from entropy-weighted tokens or all alike", "choices": VARIANTS})
    seed: int = field(default=0, metadata={"help": "for --source random"})

    def __post_init__(self) -> None:
        if self.params is not None and any(getattr(self, k) is not None for k in SIZES):
            raise ValueError("give either params or sizes (heads, kv_heads, ffn, hidden), not both")

    def sizes(self, model_config) -> dict[str, int]:
        """The target sizes, solved from the budget for `model_config` when one is given."""
        if self.params is not None:
            return solve_budget(model_config, parse_count(self.params), tuple(self.budget_axes))["sizes"]
        sizes = {k: getattr(self, k) for k in SIZES if getattr(self, k) is not None}
        if not sizes:
            raise ValueError("width pruning needs params (a budget) or at least one of heads, kv_heads, ffn, hidden")
        return sizes


def _linear(old: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the chosen output rows / input columns of `old` (bias follows rows)."""
    weight = old.weight.data
    if out_idx is not None:
        weight = weight.index_select(0, out_idx.to(weight.device))
    if in_idx is not None:
        weight = weight.index_select(1, in_idx.to(weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if old.bias is not None:
        bias = old.bias.data if out_idx is None else old.bias.data.index_select(0, out_idx.to(weight.device))
        new.bias.data.copy_(bias)
    return new


def _per_layer(model: nn.Module, keep: list[torch.Tensor], what: str, total: int) -> int:
    """The common size of one index set per decoder layer, after checking them."""
    layers = decoder_layers(model)
    if len(keep) != len(layers):
        raise ValueError(f"one index set per layer: {len(layers)} needed, {len(keep)} given")
    return _uniform(keep, what, total)


def _uniform(keep: list[torch.Tensor], what: str, total: int) -> int:
    sizes = {len(k) for k in keep}
    if len(sizes) != 1:
        raise ValueError(f"every layer must keep the same number of {what}; got {sorted(sizes)}")
    size = sizes.pop()
    for k in keep:
        if not 0 < size <= total or len(set(k.tolist())) != size or int(k.min()) < 0 or int(k.max()) >= total:
            raise ValueError(f"{what}: keep 1..{total} distinct indices in 0..{total - 1}")
    return size


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def prune_ffn(model: nn.Module, keep: list[torch.Tensor]) -> nn.Module:
    """Keep FFN neurons `keep[i]` (sorted) in layer i; in place."""
    size = _per_layer(model, keep, "FFN neurons", model.config.intermediate_size)
    for i, idx in enumerate(keep):
        mlp = layer_parts(model, i).mlp
        idx = idx.sort().values
        mlp.gate_proj = _linear(mlp.gate_proj, out_idx=idx)
        mlp.up_proj = _linear(mlp.up_proj, out_idx=idx)
        mlp.down_proj = _linear(mlp.down_proj, in_idx=idx)
    model.config.intermediate_size = size
    return model


def _group_size(model: nn.Module) -> tuple[int, int]:
    """(KV groups, query heads per group) of the model as it stands."""
    config = model.config
    return config.num_key_value_heads, config.num_attention_heads // config.num_key_value_heads


def _sorted_per_layer(model: nn.Module, keep: list[torch.Tensor]):
    """(layer, its kept indices in ascending order, its attention module) for every layer."""
    for i, idx in enumerate(keep):
        yield i, idx.sort().values, layer_parts(model, i).attn


def prune_heads(model: nn.Module, keep: list[torch.Tensor]) -> nn.Module:
    """Keep query heads `keep[i]` in layer i; each KV group must keep the same number. In place."""
    kv, group = _group_size(model)
    size = _per_layer(model, keep, "query heads", kv * group)
    if size % kv:
        raise ValueError(f"{size} query heads cannot be spread evenly over {kv} KV groups")
    for i, idx, attn in _sorted_per_layer(model, keep):
        counts = torch.bincount(idx // group, minlength=kv)
        if not torch.all(counts == size // kv):
            raise ValueError(f"layer {i}: each KV group must keep {size // kv} query heads; got {counts.tolist()}")
        rows = _head_rows(idx, attn.head_dim)
        attn.q_proj = _linear(attn.q_proj, out_idx=rows)
        attn.o_proj = _linear(attn.o_proj, in_idx=rows)
        attn.num_key_value_groups = size // kv
    model.config.num_attention_heads = size
    return model


def prune_kv_groups(model: nn.Module, keep: list[torch.Tensor]) -> nn.Module:
    """Keep KV groups `keep[i]` in layer i, each with all of its query heads. In place."""
    kv, group = _group_size(model)
    size = _per_layer(model, keep, "KV groups", kv)
    for _, idx, attn in _sorted_per_layer(model, keep):
        kv_rows = _head_rows(idx, attn.head_dim)
        q_rows = _head_rows((idx[:, None] * group + torch.arange(group)).reshape(-1), attn.head_dim)
        attn.q_proj = _linear(attn.q_proj, out_idx=q_rows)
        attn.k_proj = _linear(attn.k_proj, out_idx=kv_rows)
        attn.v_proj = _linear(attn.v_proj, out_idx=kv_rows)
        attn.o_proj = _linear(attn.o_proj, in_idx=q_rows)
    model.config.num_key_value_heads = size
    model.config.num_attention_heads = size * group
    return model


def _norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    norm.weight = nn.Parameter(norm.weight.data.index_select(0, idx.to(norm.weight.device)).clone())
    return norm


def prune_hidden(model: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep hidden channels `keep` of the residual stream, everywhere it is read or written. In place.
    RMSNorm then normalises over the kept channels only: exact when all are kept, an
    approximation that healing repairs otherwise."""
    config = model.config
    idx = keep.sort().values
    _uniform([idx], "hidden channels", config.hidden_size)
    layout = layout_of(model)
    parent_path, _, attr = layout.embed.rpartition(".")
    parent = model.get_submodule(parent_path)
    old = getattr(parent, attr)
    embed = nn.Embedding(old.num_embeddings, len(idx), padding_idx=old.padding_idx,
                         device=old.weight.device, dtype=old.weight.dtype)
    embed.weight.data.copy_(old.weight.data.index_select(1, idx.to(old.weight.device)))
    setattr(parent, attr, embed)
    for i in range(len(decoder_layers(model))):
        parts = layer_parts(model, i)
        attn, mlp = parts.attn, parts.mlp
        _norm(parts.input_norm, idx)
        _norm(parts.post_attn_norm, idx)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, _linear(getattr(attn, name), in_idx=idx))
        attn.o_proj = _linear(attn.o_proj, out_idx=idx)
        mlp.gate_proj = _linear(mlp.gate_proj, in_idx=idx)
        mlp.up_proj = _linear(mlp.up_proj, in_idx=idx)
        mlp.down_proj = _linear(mlp.down_proj, out_idx=idx)
    _norm(model.get_submodule(layout.final_norm), idx)
    head = model.get_output_embeddings()
    if getattr(config, "tie_word_embeddings", False):
        head.weight = embed.weight
    else:
        model.set_output_embeddings(_linear(head, in_idx=idx))
    config.hidden_size = len(idx)
    return model


def keep_by_score(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, in ascending index order (ties: lower index)."""
    if not 0 < count <= scores.shape[-1]:
        raise ValueError(f"keep 1..{scores.shape[-1]}, not {count}")
    order = torch.argsort(-scores.double(), stable=True)
    return order[:count].sort().values


def keep_heads_in_groups(scores: torch.Tensor, kv_heads: int, per_group: int) -> torch.Tensor:
    """The `per_group` best query heads inside each of `kv_heads` groups, from per-head scores [heads]."""
    group = scores.shape[0] // kv_heads
    chosen = [g * group + keep_by_score(scores[g * group:(g + 1) * group], per_group) for g in range(kv_heads)]
    return torch.cat(chosen)


def importance_scores(model: nn.Module, source: str = "activation", importance_file: str | None = None,
                      variant: str = "weighted", seed: int = 0, source_layers: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Scores per layer for FFN neurons [L, ffn] and query heads [L, heads], and for hidden
    channels [hidden] (higher = keep):
    - activation: the capture's Minitron importance (importance.safetensors); channels are
      aggregated over layers by L2, as their one index set serves every layer. After depth
      pruning, `source_layers` names the captured layer each remaining layer came from (the plan's
      `kept`), so the teacher's capture still scores the student;
    - magnitude: weight norms (neuron: |gate row| * |up row| * |down column|; head: its o_proj
      columns; channel: its embedding column), the data-free baseline;
    - random: seeded uniform scores."""
    layers = decoder_layers(model)
    n, c = len(layers), model.config
    if source == "random":
        g = torch.Generator().manual_seed(seed)
        return {"neuron": torch.rand(n, c.intermediate_size, generator=g),
                "head": torch.rand(n, c.num_attention_heads, generator=g),
                "channel": torch.rand(c.hidden_size, generator=g)}
    if source == "magnitude":
        neuron, head = [], []
        for i in range(n):
            parts = layer_parts(model, i)
            mlp, o = parts.mlp, parts.o_proj.weight.detach().float()
            neuron.append(mlp.gate_proj.weight.detach().float().norm(dim=1) * mlp.up_proj.weight.detach().float().norm(dim=1)
                          * mlp.down_proj.weight.detach().float().norm(dim=0))
            head.append(o.reshape(o.shape[0], c.num_attention_heads, -1).norm(dim=(0, 2)))
        embed = model.get_input_embeddings().weight.detach().float()
        return {"neuron": torch.stack(neuron).cpu(), "head": torch.stack(head).cpu(), "channel": embed.norm(dim=0).cpu()}
    if source != "activation":
        raise ValueError(f"unknown importance source {source!r}; choose {', '.join(SOURCES)}")
    if importance_file is None:
        raise ValueError("activation importance needs the capture's importance.safetensors")
    with safe_open(str(importance_file), "pt") as f:
        captured = json.loads(f.metadata()["layers"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    wanted = list(range(n)) if source_layers is None else list(source_layers)
    if len(wanted) != n:
        raise ValueError(f"the model has {n} layers but {len(wanted)} captured layers were named for them")
    missing = [l for l in wanted if l not in captured]
    if missing:
        raise ValueError(f"width pruning needs importance for layers {wanted}; the capture lacks {missing}")
    rows = torch.tensor([captured.index(l) for l in wanted])
    return {"neuron": tensors[f"{variant}.neuron_importance"][rows], "head": tensors[f"{variant}.head_importance"][rows],
            "channel": tensors[f"{variant}.channel_importance"][rows].double().norm(dim=0).float()}


def prune_width(model: nn.Module, scores: dict[str, torch.Tensor], kv_heads: int | None = None,
                heads: int | None = None, ffn: int | None = None, hidden: int | None = None) -> dict:
    """Prune to the target sizes (None keeps a size) by the given scores; returns what was kept."""
    c = model.config
    n = len(decoder_layers(model))
    kept: dict = {}
    head_scores = scores["head"]
    group = c.num_attention_heads // c.num_key_value_heads
    if kv_heads is not None and kv_heads != c.num_key_value_heads:
        group_scores = head_scores.reshape(n, c.num_key_value_heads, group).sum(-1)
        kept["kv_groups"] = [keep_by_score(group_scores[i], kv_heads) for i in range(n)]
        # The surviving heads' scores, in their new order, for the query-head step below.
        head_scores = torch.stack([head_scores[i].reshape(-1, group)[kept["kv_groups"][i]].reshape(-1) for i in range(n)])
        prune_kv_groups(model, kept["kv_groups"])
    if heads is not None and heads != c.num_attention_heads:
        kv = c.num_key_value_heads
        if heads % kv:
            raise ValueError(f"--heads {heads} is not a multiple of the {kv} KV groups")
        kept["heads"] = [keep_heads_in_groups(head_scores[i], kv, heads // kv) for i in range(n)]
        prune_heads(model, kept["heads"])
    if ffn is not None and ffn != c.intermediate_size:
        kept["ffn"] = [keep_by_score(scores["neuron"][i], ffn) for i in range(n)]
        prune_ffn(model, kept["ffn"])
    if hidden is not None and hidden != c.hidden_size:
        kept["hidden"] = keep_by_score(scores["channel"], hidden)
        prune_hidden(model, kept["hidden"])
    return kept


def write_plan(out_dir: str | Path, pruned: nn.Module, kept: dict, before: int, **origin) -> dict:
    """width_plan.json next to a pruned checkpoint: where it came from, its sizes, what was kept."""
    c = pruned.config
    plan = {**origin,
            "sizes": {"kv_heads": c.num_key_value_heads, "heads": c.num_attention_heads,
                      "ffn": c.intermediate_size, "hidden": c.hidden_size},
            "parameters": {"before": before, "after": sum(p.numel() for p in pruned.parameters())},
            "kept": {k: [t.tolist() for t in v] if isinstance(v, list) else v.tolist() for k, v in kept.items()}}
    write_json(Path(out_dir) / PLAN_FILE, plan)
    return plan


def importance_path(path: str | Path | None) -> Path | None:
    """importance.safetensors, given as the file or as the capture / analysis folder holding it."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        path = path / IMPORTANCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no importance file at {path}: run python -m compress.analyze")
    return path


def width_scores(model: nn.Module, config: WidthConfig, importance: str | Path | None,
                 source_layers: list[int] | None) -> dict[str, torch.Tensor]:
    """`importance_scores` as `config` asks for them (`importance`: file or folder)."""
    path = importance_path(importance)
    return importance_scores(model, config.source, None if path is None else str(path), config.variant, config.seed,
                             source_layers=source_layers)


def prune_to_width(model_path: str, load: LoadOptions, config: WidthConfig, out_dir: str | Path,
                   importance: str | Path | None = None, depth_plan: str | Path | None = None) -> dict:
    """Load `model_path`, prune it to `config`'s sizes and write it with width_plan.json to
    `out_dir`; returns the plan. A depth-pruned model is scored with the capture of the teacher
    layers it kept: `depth_plan` (pruning_plan.json), by default the one in its own folder."""
    source_layers = kept_layers(depth_plan, required=True) if depth_plan else kept_layers(model_path)
    importance = importance_path(importance)  # missing: fail before the model is loaded
    model, tokenizer = load_model(model_path, load)
    before = sum(p.numel() for p in model.parameters())
    sizes = config.sizes(model.config)
    check_shape(model.config, sizes)  # an impossible shape is refused before any surgery
    kept = prune_width(model, width_scores(model, config, importance, source_layers), **sizes)
    with atomic_dir(out_dir) as tmp:  # the folder appears whole or not at all
        save_model_dir(model, tokenizer, tmp)
        return write_plan(tmp, model, kept, before, model=model_path, **asdict(config))


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m compress.width", "Prune attention heads, KV groups, FFN neurons and hidden "
                        "channels to uniform target sizes; writes the checkpoint and width_plan.json.")
    add_model_flags(parser, device="cpu")  # index selection: nothing for a GPU to speed up
    parser.add_argument("--importance", help="importance.safetensors or the capture/analysis directory holding it")
    parser.add_argument("--depth-plan", help="pruning_plan.json naming the teacher layers a depth-pruned model kept "
                        "(default: the one in the model's directory, if any)")
    parser.add_argument("--out", required=True, help="directory of the pruned checkpoint")
    add_config_flags(parser, WidthConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _prune, (ValueError, FileNotFoundError, ModelLoadError))


def _prune(args) -> int:
    plan = prune_to_width(args.model, load_options(args), config_from_args(WidthConfig, args), args.out,
                          args.importance, args.depth_plan)
    before, after = plan["parameters"]["before"], plan["parameters"]["after"]
    print(f"{before / 1e6:.2f}M -> {after / 1e6:.2f}M parameters; sizes {plan['sizes']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
