"""Which layers of the teacher are redundant for the tour-guide task.

    python -m compress.analyze out/capture [--out DIR] [--weights block_influence=1,angular=1,cka=1]

Reads a capture directory (stats sums, or raw pt/h5 shards, which are streamed through the same
sums) and scores every captured layer, once with every token counted alike ("unweighted") and
once with tokens weighted by the teacher's next-token entropy ("weighted"):

- cos_layer: cosine of a layer's input and output residual states (pre-norm);
  block_influence = 1 - cos_layer (ShortGPT); cos_attn / cos_ffn split it by sub-layer.
- angular distance (Gromov et al.): arccos(cos)/pi between the states n layers apart, for each
  block size n, and the start of the most redundant block of each size.
- all-pairs matrices of the residual states: mean cosine and linear CKA.
- magnitude (mean L2 norm), variance (mean per-channel variance), sparsity (share of activations
  below 1% of their token's RMS) of each layer's output.
- importance: a weighted sum of min-max normalised block influence, angular distance (n=1) and
  1 - CKA to the next state. Low importance = candidate for deletion.

Writes analysis.json (read by pruning), importance.safetensors (per channel / head / neuron
scores for width pruning), similarity.png and importance.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from compress.plots import plot_importance, plot_similarity
from compress.shards import CaptureReader
from compress.stats import VARIANTS, Dims, StreamStats, residual_states
from core.artifacts import ANALYSIS_FILE, CAPTURE_FILE, IMPORTANCE_FILE, STATS_FILE, atomic_path, write_json
from core.cli import fail

BLOCK_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ImportanceWeights:
    """How the importance score weighs its terms: the pipeline's [analyze] section, and the CLI's
    --weights (`parse`)."""

    block_influence: float = 1.0
    angular: float = 1.0
    cka: float = 1.0

    @classmethod
    def parse(cls, text: str) -> ImportanceWeights:
        values = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = item.partition("=")
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown importance term {key!r}; use {', '.join(cls.__dataclass_fields__)}")
            values[key] = float(value)
        return cls(**values)


def load_stats(capture_dir: str | Path, progress: bool = False) -> tuple[StreamStats, dict]:
    """The capture's sums: read from stats mode, or recomputed from raw shards."""
    capture_dir = Path(capture_dir)
    meta_path = capture_dir / CAPTURE_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{capture_dir} is not a capture directory (no {CAPTURE_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta["format"] == "stats":
        return StreamStats.from_state_dict(load_file(str(capture_dir / STATS_FILE))), meta
    reader = CaptureReader(capture_dir)
    stats = StreamStats(meta["layers"], Dims(**meta["dims"]), meta.get("cka_tokens", 256))
    try:
        for row, tensors in tqdm(reader, total=len(reader), disable=not progress, desc="shards"):
            reader.verify_row(row, tensors)
            entropy = tensors.pop("entropy")
            tensors.pop("input_ids")
            stats.update(tensors, entropy)
    finally:
        reader.close()
    return stats, meta


def _minmax(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom else 1.0


def layer_scores(summary: dict[str, torch.Tensor], layers: list[int], weights: ImportanceWeights) -> dict:
    n = len(layers)
    angle, cka = summary["pair_angle"], summary["pair_cka"]
    names, spans = residual_states(layers)
    inputs, outputs = torch.tensor([a for a, _ in spans]), torch.tensor([b for _, b in spans])
    angular_1 = angle[inputs, outputs]
    cka_next = cka[inputs, outputs]
    block_influence = 1 - summary["cos_layer"]
    total = weights.block_influence + weights.angular + weights.cka
    importance = (
        weights.block_influence * _minmax(block_influence)
        + weights.angular * _minmax(angular_1)
        + weights.cka * _minmax(1 - cka_next)
    ) / (total or 1.0)
    blocks = {}
    for size in BLOCK_SIZES:
        if size > n:
            continue
        # Gromov's block distance only means "drop these layers" for consecutive ones.
        starts = [k for k in range(n - size + 1) if layers[k + size - 1] - layers[k] == size - 1]
        if not starts:
            continue
        values = [float(angle[spans[k][0], spans[k + size - 1][1]]) for k in starts]
        best = min(range(len(starts)), key=values.__getitem__)
        blocks[str(size)] = {
            "start_layers": [layers[k] for k in starts],
            "angular": values,
            "best_start": layers[starts[best]],
            "best_angular": values[best],
        }
    return {
        "cos_layer": summary["cos_layer"].tolist(),
        "block_influence": block_influence.tolist(),
        "cos_attn": summary["cos_attn"].tolist(),
        "cos_ffn": summary["cos_ffn"].tolist(),
        "angular_1": angular_1.tolist(),
        "cka_next": cka_next.tolist(),
        "magnitude": summary["magnitude"].tolist(),
        "variance": summary["variance"].tolist(),
        "sparsity": summary["sparsity"].tolist(),
        "importance": importance.tolist(),
        "ranking": [layers[k] for k in importance.argsort().tolist()],  # least important first
        "blocks": blocks,
        "states": names,
        "pair_cos": summary["pair_cos"].tolist(),
        "pair_angle": angle.tolist(),
        "pair_cka": summary["pair_cka"].tolist(),
    }


SINK_FREE = {"cos_layer": "cos_layer_nosink", "pair_cos": "pair_cos_nosink", "pair_angle": "pair_angle_nosink",
             "pair_cka": "pair_cka_nosink"}


def variant_scores(stats: StreamStats, variant: str, weights: ImportanceWeights) -> tuple[dict, dict]:
    """(layer scores, summary) of one variant. Cosines, angles and CKA leave out massive-activation
    tokens (compress.stats.SINK_RATIO) where the capture found any; the scores with them stay under
    `with_sinks`, and Gromov et al.'s last-token angular distance is given beside the all-token mean."""
    summary = stats.summary(variant)
    recorded = float(stats.sums["last_count"][0]) > 0  # captures from before these sums have none
    share = float(summary["sink_share"]) if recorded else 0.0
    clean = {**summary, **{k: summary[v] for k, v in SINK_FREE.items()}} if share > 0 else summary
    scores = layer_scores(clean, stats.layers, weights)
    scores["tokens_used"] = "all but massive-activation tokens" if share > 0 else "all"
    scores["sink_share"] = share
    if share > 0:
        full = layer_scores(summary, stats.layers, weights)
        scores["with_sinks"] = {k: full[k] for k in ("cos_layer", "block_influence", "angular_1", "cka_next",
                                                     "importance", "ranking")}
    if recorded:
        last = layer_scores({**clean, "pair_angle": summary["pair_angle_last"]}, stats.layers, weights)
        scores["angular_last"], scores["blocks_last"] = last["angular_1"], last["blocks"]
    return scores, summary


def analyze(
    capture_dir: str | Path,
    out_dir: str | Path | None = None,
    weights: ImportanceWeights = ImportanceWeights(),
    plots: bool = True,
    progress: bool = False,
) -> dict:
    """Score the capture, write analysis.json / importance.safetensors / plots; return the analysis."""
    stats, meta = load_stats(capture_dir, progress)
    out = Path(out_dir) if out_dir else Path(capture_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = stats.layers
    result = {
        "model": meta["model"],
        "model_type": meta.get("model_type"),
        "num_layers": meta.get("num_layers"),
        "layers": layers,
        "samples": stats.samples,
        "tokens": int(stats.sums["tokens"][0].item()),
        "mean_entropy": float(stats.sums["weight_sum"][1] / stats.sums["tokens"][0].clamp_min(1)),
        "weights": asdict(weights),
        "importance_file": IMPORTANCE_FILE,
    }
    tensors = {}
    for variant in VARIANTS:
        result[variant], summary = variant_scores(stats, variant, weights)
        for kind in ("channel", "head", "neuron"):
            for stat in ("importance", "variance", "sparsity"):
                tensors[f"{variant}.{kind}_{stat}"] = summary[f"{kind}_{stat}"].float().contiguous()
    u, w = result["unweighted"], result["weighted"]
    k = max(1, len(layers) // 4)
    result["agreement"] = {
        "spearman_importance": spearman(torch.tensor(u["importance"]), torch.tensor(w["importance"])),
        "bottom_quarter": k,
        "bottom_quarter_overlap": len(set(u["ranking"][:k]) & set(w["ranking"][:k])) / k,
        "same_ranking": u["ranking"] == w["ranking"],
    }
    with atomic_path(out / IMPORTANCE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"layers": json.dumps(layers)})
    write_json(out / ANALYSIS_FILE, result)
    if plots:
        result["plots"] = [str(plot_similarity(result, out)), str(plot_importance(result, out))]
    return result


def format_table(result: dict) -> str:
    """Per-layer table of the main scores, unweighted with the weighted importance beside it."""
    u, w = result["unweighted"], result["weighted"]
    head = f"{'layer':>5} {'cos':>7} {'BI':>7} {'attn':>7} {'ffn':>7} {'ang1':>7} {'cka':>7} {'|h|':>9} {'sparse':>7} {'imp':>6} {'imp_w':>6}"
    lines = [head]
    for k, layer in enumerate(result["layers"]):
        lines.append(
            f"{layer:>5} {u['cos_layer'][k]:7.4f} {u['block_influence'][k]:7.4f} {u['cos_attn'][k]:7.4f} "
            f"{u['cos_ffn'][k]:7.4f} {u['angular_1'][k]:7.4f} {u['cka_next'][k]:7.4f} {u['magnitude'][k]:9.3f} "
            f"{u['sparsity'][k]:7.4f} {u['importance'][k]:6.3f} {w['importance'][k]:6.3f}"
        )
    agree = result["agreement"]
    lines.append(f"least important first: unweighted {u['ranking']}")
    lines.append(f"                        weighted   {w['ranking']}")
    lines.append(
        f"spearman(unweighted, weighted) = {agree['spearman_importance']:.3f}; "
        f"bottom-{agree['bottom_quarter']} overlap {agree['bottom_quarter_overlap']:.2f}"
    )
    for size, block in u["blocks"].items():
        lines.append(
            f"most redundant block of {size}: layers {block['best_start']}..{block['best_start'] + int(size) - 1} "
            f"(angular {block['best_angular']:.4f}; weighted: from {w['blocks'][size]['best_start']})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compress.analyze",
        description=__doc__.split("\n\n")[0] + " Scores every captured layer (see the module docstring).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument("capture_dir", help="directory written by python -m compress.capture")
    parser.add_argument("--out", help="where analysis.json, importance.safetensors and PNGs go (default: the capture dir)")
    parser.add_argument("--weights", default="", help="importance terms, e.g. block_influence=1,angular=0.5,cka=0")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--json", action="store_true", help="print analysis.json instead of the table")
    args = parser.parse_args(argv)
    try:
        result = analyze(args.capture_dir, args.out, ImportanceWeights.parse(args.weights), not args.no_plots, progress=True)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        return fail(exc)
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
