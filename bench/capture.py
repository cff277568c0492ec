"""Capture benchmark: overhead of stats mode over a plain forward pass, storage per token of the
raw formats, and the layer analysis of a teacher; writes docs/results/capture.md.

    python -m bench.capture --model out/teacher-demo --data out/corpus

Overhead is timed on the same token sequences (the teacher's answers are generated once, before
timing): a plain `model(ids)` against hooks + forward + entropy + streaming statistics. Each
sample is timed in both ways alternately, `--repeats` times; the report gives per-sample medians
and the ratio of the summed medians.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import reproduce_command
from compress.analyze import analyze, format_table
from compress.capture import (
    ActivationRecorder,
    CaptureConfig,
    Sources,
    collect_samples,
    run_capture,
    teacher_sequences,
    token_entropy,
)
from compress.stats import Dims, StreamStats, stat_shapes
from core.artifacts import write_atomic
from models.load import LoadOptions, decoder_layers, input_device, load_model

ROOT = Path(__file__).resolve().parent.parent
# Qwen3-32B: 64 layers, hidden 5120, 64 query heads of 128, FFN 25600.
QWEN3_32B = Dims(hidden=5120, heads=64, head_dim=128, intermediate=25600)
QWEN3_32B_LAYERS = 64
SEED_PLAN_BYTES_PER_256 = 82e6  # the seed plan: 64 layers x 5120 x 256 tokens at 1 byte


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_overhead(model, sequences: list[list[int]], repeats: int, device) -> dict:
    layers = list(range(len(decoder_layers(model))))
    stats = StreamStats(layers, Dims.of(model.config), device=device)
    plain_times, capture_times = [[] for _ in sequences], [[] for _ in sequences]
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first round warms up and is discarded
            for n, ids in enumerate(sequences):
                x = torch.tensor([ids], device=device)
                _sync(device)
                t0 = time.perf_counter()
                model(input_ids=x, use_cache=False)
                _sync(device)
                t1 = time.perf_counter()
                # Attaching and removing the hooks is timed too: the plain pass runs without them.
                recorder = ActivationRecorder(model, layers)
                with recorder.recording():
                    logits = model(input_ids=x, use_cache=False).logits[0]
                stats.update(recorder.take(), token_entropy(logits))
                recorder.remove()
                _sync(device)
                t2 = time.perf_counter()
                if _ > 0:
                    plain_times[n].append(t1 - t0)
                    capture_times[n].append(t2 - t1)
    plain = [statistics.median(t) for t in plain_times]
    captured = [statistics.median(t) for t in capture_times]
    ratios = [c / p for c, p in zip(captured, plain)]
    return {
        "samples": len(sequences),
        "tokens": sum(len(s) for s in sequences),
        "repeats": repeats,
        "plain_ms_median": 1000 * statistics.median(plain),
        "capture_ms_median": 1000 * statistics.median(captured),
        "ratio_total": sum(captured) / sum(plain),
        "ratio_median": statistics.median(ratios),
    }


def measure_storage(model_dir: str, corpus: str, work: Path, limit: int, device: str, batch_size: int) -> dict:
    out = {}
    for fmt in ("pt", "h5", "stats"):
        target = work / fmt
        shutil.rmtree(target, ignore_errors=True)
        summary = run_capture(model_dir, target, Sources(data=corpus), CaptureConfig(
            format=fmt, limit=limit, batch_size=batch_size), LoadOptions(device=device), progress=False)
        if fmt == "pt":
            data_bytes = sum(p.stat().st_size for p in target.glob("sample_*.safetensors"))
        elif fmt == "h5":
            data_bytes = (target / "activations.h5").stat().st_size
        else:
            data_bytes = (target / "stats.safetensors").stat().st_size
        out[fmt] = {"bytes": data_bytes, "tokens": summary["tokens_now"], "bytes_per_token": data_bytes / summary["tokens_now"]}
    return out


def elements_per_token(dims: Dims, layers: int) -> dict[str, int]:
    residual = 2 * dims.hidden  # post-attention and output states
    projections = dims.heads * dims.head_dim + dims.intermediate
    return {"residual": layers * residual, "all": layers * (residual + projections)}


def stats_bytes(layers: int, dims: Dims) -> int:
    return 2 * 8 * sum(math.prod(s) for s in stat_shapes(list(range(layers)), dims).values())


def render(report: dict) -> str:
    o, s, a = report["overhead"], report["storage"], report["analysis"]
    ex = report["extrapolation"]
    lines = [
        f"# Activation capture: overhead, storage, and the layers of {report['model_name']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; model `{report['model']}` ({report['parameters']:,} parameters, "
        f"{report['num_layers']} layers, hidden {report['dims']['hidden']}); device {report['device']}.",
        "",
        "## Overhead of stats mode over a plain forward pass",
        "",
        f"{o['samples']} corpus samples ({o['tokens']:,} tokens, prompt + the teacher's greedy answer), each timed "
        f"{o['repeats']} times both ways after a warm-up round.",
        "",
        "| | per sample, median |",
        "|---|---|",
        f"| plain forward | {o['plain_ms_median']:.1f} ms |",
        f"| hooks + forward + entropy + statistics | {o['capture_ms_median']:.1f} ms |",
        f"| ratio (sum of medians) | **{o['ratio_total']:.2f}x** (median of per-sample ratios {o['ratio_median']:.2f}x; goal <= 1.2x) |",
        "",
    ]
    sc = report.get("overhead_scaled")
    if sc:
        lines += [
            f"The same {sc['samples']} sequences through a randomly initialised model of the `{sc['preset']}` preset's "
            f"shape ({sc['parameters']:,} parameters, {sc['num_layers']} layers, hidden {sc['hidden']}; timing depends "
            "on shapes, not weights):",
            "",
            "| | per sample, median |",
            "|---|---|",
            f"| plain forward | {sc['plain_ms_median']:.1f} ms |",
            f"| hooks + forward + entropy + statistics | {sc['capture_ms_median']:.1f} ms |",
            f"| ratio (sum of medians) | **{sc['ratio_total']:.2f}x** (median of per-sample ratios {sc['ratio_median']:.2f}x) |",
            "",
        ]
    lines += [
        "## Storage",
        "",
        f"Measured on {s['pt']['tokens']:,} tokens of {report['model_name']} (float16 shards, every layer, all four "
        "hooks):",
        "",
        "| format | bytes | bytes per token |",
        "|---|---|---|",
        f"| pt (safetensors per sample) | {s['pt']['bytes']:,} | {s['pt']['bytes_per_token']:,.0f} |",
        f"| h5 (gzip level 4 + shuffle) | {s['h5']['bytes']:,} | {s['h5']['bytes_per_token']:,.0f} |",
        f"| stats (fixed size) | {s['stats']['bytes']:,} | does not grow |",
        "",
        f"The raw pt size is {report['pt_vs_formula']:.3f}x the element count x 2 bytes, so the formula below "
        "extrapolates it.",
        "",
        "Extrapolated to Qwen3-32B (64 layers, hidden 5120, 64 heads x 128, FFN 25600), 10,000 samples of 256 tokens:",
        "",
        "| what is stored | per token | 10,000 x 256 tokens |",
        "|---|---|---|",
        f"| seed plan: one residual state per layer at 1 byte | {ex['seed_per_token'] / 1e3:,.0f} KB | {ex['seed_total'] / 1e12:,.2f} TB |",
        f"| raw, residual states only (post-attn + output), fp16 | {ex['residual_per_token'] / 1e3:,.0f} KB "
        f"| {ex['residual_total'] / 1e12:,.2f} TB |",
        f"| raw, all four hooks, fp16 | {ex['all_per_token'] / 1e6:,.2f} MB | {ex['all_total'] / 1e12:,.1f} TB |",
        f"| stats mode (float64 sums, both variants) | - | {ex['stats_bytes'] / 1e6:,.0f} MB, fixed |",
        "",
        f"## The layers of {report['model_name']}",
        "",
        f"{a['samples']} training prompts answered by the teacher, {a['tokens']:,} tokens, mean next-token entropy "
        f"{a['mean_entropy']:.3f} nats. Low importance = candidate for deletion.",
        "",
        "![similarity](capture_similarity.png)",
        "",
        "![importance](capture_importance.png)",
        "",
        "```",
        report["table"],
        "```",
        "",
        report["reading"],
        "",
    ]
    return "\n".join(lines)


def model_name(model: str) -> str:
    """How the report names the model: `out/teacher-demo` -> the demo teacher, a folder by its name."""
    name = Path(model).name
    return f"the {name.removeprefix('teacher-')} teacher" if name.startswith("teacher-") else f"`{name}`"


def reading(analysis: dict) -> str:
    u, w = analysis["unweighted"], analysis["weighted"]
    agree = analysis["agreement"]
    k = agree["bottom_quarter"]
    first, last = analysis["layers"][0], analysis["layers"][-1]
    bi = u["block_influence"]
    text = [
        f"Reading: the least important {k} layers are {u['ranking'][:k]} unweighted and {w['ranking'][:k]} weighted "
        f"(overlap {agree['bottom_quarter_overlap']:.2f}; Spearman of the importance scores {agree['spearman_importance']:.3f}). "
        f"Block influence ranges from {min(bi):.4f} to {max(bi):.4f}; layer {first} has {bi[0]:.4f} and the last layer "
        f"({last}) {bi[-1]:.4f}.",
    ]
    for size in ("2", "4"):
        if size in u["blocks"]:
            text.append(
                f"The most redundant block of {size} starts at layer {u['blocks'][size]['best_start']} "
                f"(weighted: {w['blocks'][size]['best_start']})."
            )
    return " ".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="out/teacher-demo")
    parser.add_argument("--data", default="out/corpus")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overhead-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--storage-samples", type=int, default=16)
    parser.add_argument("--analysis-samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts the teacher answers at once")
    parser.add_argument("--scale-preset", default="gpu", help="also time a random model of this proxy preset's shape ('' to skip)")
    parser.add_argument("--scale-samples", type=int, default=8)
    parser.add_argument("--work", default="runs/bench-capture")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "capture.md"))
    args = parser.parse_args(argv)

    work = Path(args.work)
    model, tokenizer = load_model(args.model, LoadOptions(dtype="float32", device=args.device))
    config = CaptureConfig(limit=args.overhead_samples, batch_size=args.batch_size)
    samples = collect_samples(Sources(data=args.data), config.split, config.limit)
    sequences = [inp + out for _, inp, out in teacher_sequences(samples, model, tokenizer, config)]
    overhead = time_overhead(model, sequences, args.repeats, input_device(model))
    scaled = None
    if args.scale_preset:
        # The same sequences through a randomly initialised model of a bigger preset's shape:
        # timing depends on shapes, not weights, and shows how the overhead shrinks with size.
        from transformers import Qwen3ForCausalLM

        from train.proxy import PRESETS, qwen3_config

        torch.manual_seed(0)
        big = Qwen3ForCausalLM(qwen3_config(PRESETS[args.scale_preset], tokenizer)).to(args.device).eval()
        scaled = time_overhead(big, sequences[: args.scale_samples], args.repeats, args.device)
        scaled.update(preset=args.scale_preset, parameters=sum(p.numel() for p in big.parameters()),
                      num_layers=big.config.num_hidden_layers, hidden=big.config.hidden_size)
        del big
    storage = measure_storage(args.model, args.data, work, args.storage_samples, args.device, args.batch_size)

    dims = Dims.of(model.config)
    n_layers = len(decoder_layers(model))
    measured_elements = elements_per_token(dims, n_layers)["all"]
    per_token = elements_per_token(QWEN3_32B, QWEN3_32B_LAYERS)
    total_tokens = 10_000 * 256
    extrapolation = {
        "seed_per_token": SEED_PLAN_BYTES_PER_256 / 256,
        "seed_total": SEED_PLAN_BYTES_PER_256 * 10_000,
        "residual_per_token": 2 * per_token["residual"],
        "residual_total": 2 * per_token["residual"] * total_tokens,
        "all_per_token": 2 * per_token["all"],
        "all_total": 2 * per_token["all"] * total_tokens,
        "stats_bytes": stats_bytes(QWEN3_32B_LAYERS, QWEN3_32B),
    }

    analysis_dir = work / "analysis"
    shutil.rmtree(analysis_dir, ignore_errors=True)
    run_capture(args.model, analysis_dir, Sources(data=args.data),
                CaptureConfig(limit=args.analysis_samples, batch_size=args.batch_size), LoadOptions(device=args.device))
    analysis = analyze(analysis_dir)
    out = Path(args.out)
    stem = out.stem
    for name in ("similarity", "importance"):
        shutil.copyfile(analysis_dir / f"{name}.png", out.parent / f"{stem}_{name}.png")

    report = {
        "command": reproduce_command("bench.capture", argv if argv is not None else sys.argv[1:], out, "capture.md"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"
        + (f", {torch.cuda.get_device_name()}" if torch.device(args.device).type == "cuda" else ""),
        "model": args.model, "model_name": model_name(args.model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_layers": n_layers,
        "dims": dims.__dict__,
        "device": args.device,
        "overhead": overhead,
        "overhead_scaled": scaled,
        "storage": storage,
        "pt_vs_formula": storage["pt"]["bytes_per_token"] / (2 * measured_elements),
        "extrapolation": extrapolation,
        "analysis": {k: analysis[k] for k in ("samples", "tokens", "mean_entropy")},
        "table": format_table(analysis),
        "reading": reading(analysis),
    }
    text = render(report).replace("capture_similarity.png", f"{stem}_similarity.png").replace(
        "capture_importance.png", f"{stem}_importance.png")
    write_atomic(out, text)
    write_atomic(out.with_suffix(".json"), json.dumps({**report, "agreement": analysis["agreement"]}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
