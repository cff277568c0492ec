"""Inference benchmark: every backend and quantization of a teacher and its pruned students on
this machine; writes docs/results/inference.md (+ .json, + a PNG).

    python -m bench.inference --model teacher=runs/demo/teacher \
        --model depth-only=runs/demo/heal/depth-only --model depth+width=runs/demo/heal/student \
        --corpus runs/demo/data

Each (model, backend, quantization) runs in a fresh child process, so its peak RSS is its own
and not the sum of everything loaded before. In the child: load, one warm-up answer, then every
query `--repeats` times, greedy. Reported are medians of time to first token (prompt included),
decode rate (tokens after the first over the time after the first), the end-to-end time of a
`brief` answer (the seed plan's target: under 2 s), and the peak RSS during requests.

Memory-bandwidth bound: generating one token reads every weight once (the tied embedding is the
output projection), so no backend can exceed copy bandwidth / weight bytes tokens per second
when the weights live in DRAM. Bandwidth is measured here with a large numpy copy (bytes read +
bytes written over the time). Models of a few MiB sit in the CPU caches instead, so their
ratios may exceed 1: the bound says how far a model of this size is from DRAM speed, not a law.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import add_render_flag, rendered_again, reproduce_command
from compress.plots import save_figure
from core.artifacts import write_atomic

ROOT = Path(__file__).resolve().parent.parent
CACHE_BYTES = 32 * 2**20  # weights under this may stay in the last-level cache between tokens
# (backend, quantization) pairs measured per model; the torch row is the unexported checkpoint.
CONFIGS = (
    ("torch", "fp32"),
    ("llamacpp", "f16"), ("llamacpp", "q8_0"), ("llamacpp", "q4_k_m"),
    ("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int4"),
)
BRIEF_TARGET_S = 2.0


@dataclass
class Target:
    model: str  # the name given on the command line
    source: str  # checkpoint directory
    backend: str
    quant: str
    path: str  # what the backend loads


def export_targets(models: dict[str, str], work: Path, configs=CONFIGS) -> list[Target]:
    """Every (model, backend, quant) as a loadable artifact; exports made once and reused while
    newer than their checkpoint."""
    from export.gguf import export_gguf
    from export.onnx import export_onnx

    targets = []
    for name, source in models.items():
        stamp = (Path(source) / "model.safetensors").stat().st_mtime
        for backend, quant in configs:
            if backend == "torch":
                path = Path(source)
            elif backend == "llamacpp":
                path = work / f"{_slug(name)}-{quant}.gguf"
                if not path.is_file() or path.stat().st_mtime < stamp:
                    print(export_gguf(source, path, quant, progress=False).summary(), flush=True)
            else:
                path = work / f"{_slug(name)}-onnx-{quant}"
                if not (path / "genai_config.json").is_file() or (path / "genai_config.json").stat().st_mtime < stamp:
                    print(export_onnx(source, path, quant).summary(), flush=True)
            targets.append(Target(name, source, backend, quant, str(path)))
    return targets


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def weight_bytes(target: Target) -> int:
    """Bytes of weights the backend reads per generated token (as stored for that backend)."""
    path = Path(target.path)
    if target.backend == "llamacpp":
        from gguf import GGUFReader

        return int(sum(t.n_bytes for t in GGUFReader(str(path)).tensors))
    if target.backend == "onnx":
        return sum(p.stat().st_size for p in path.glob("model.onnx*"))
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def file_bytes(target: Target) -> int:
    path = Path(target.path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".onnx", ".data"))


def copy_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved by a large array copy (read + write), median of a few."""
    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times)


def bench_queries(corpus: str, per_style: int = 4) -> list[dict]:
    """Known places from the training split, in the brief and detailed styles: the answers a
    visitor would get, of both lengths."""
    from data.corpus import read_split

    chosen: dict[str, list[dict]] = {"brief": [], "detailed": []}
    seen = set()
    for row in read_split(corpus, "train"):
        user = row["messages"][-1]["content"]
        style = user.rsplit("Style:", 1)[-1].strip()
        location = user.splitlines()[0]
        if style in chosen and len(chosen[style]) < per_style and (location, style) not in seen:
            seen.add((location, style))
            chosen[style].append({"style": style, "messages": row["messages"]})
    return chosen["brief"] + chosen["detailed"]


def run_target(target: Target, queries: list[dict], repeats: int, max_tokens: int) -> dict:
    """Load one artifact and time it (runs inside the child process)."""
    from models.backends import GenerationOptions, open_backend
    from models.backends.base import current_rss

    baseline = current_rss()
    start = time.perf_counter()
    backend = open_backend(target.backend, target.path)
    load_s = time.perf_counter() - start
    options = GenerationOptions(max_tokens=max_tokens)
    backend.complete(queries[0]["messages"], options)  # warm-up: first-call allocations, page faults
    rows = []
    for _ in range(repeats):
        for query in queries:
            stats = backend.complete(query["messages"], options).stats
            rows.append({"style": query["style"], **stats.to_dict()})
    backend.close()
    ttft = [r["time_to_first_token_s"] for r in rows if r["time_to_first_token_s"] is not None]
    rates = [r["tokens_per_s"] for r in rows if r["tokens_per_s"]]
    brief = [r["total_s"] for r in rows if r["style"] == "brief"]
    return {
        **asdict(target),
        "load_s": load_s,
        "baseline_rss": baseline,
        "peak_rss": max(r["peak_rss_bytes"] for r in rows),
        "ttft_s": statistics.median(ttft),
        "decode_tok_s": statistics.median(rates),
        "brief_s": statistics.median(brief),
        "brief_max_s": max(brief),
        "brief_tokens": statistics.median(r["completion_tokens"] for r in rows if r["style"] == "brief"),
        "detailed_tokens": statistics.median(r["completion_tokens"] for r in rows if r["style"] == "detailed"),
        "requests": len(rows),
        "weight_bytes": weight_bytes(target),
        "file_bytes": file_bytes(target),
    }


def run_in_child(target: Target, corpus: str, repeats: int, max_tokens: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench.inference", "--child", json.dumps(asdict(target)), "--corpus", corpus,
               "--repeats", str(repeats), "--max-tokens", str(max_tokens)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{target.model} {target.backend} {target.quant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in results))
    configs = list(dict.fromkeys(f"{r['backend']} {r['quant']}" for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        rows = {f"{r['backend']} {r['quant']}": r for r in results if r["model"] == model}
        xs = np.arange(len(configs)) + k * width
        axes[0].bar(xs, [rows[c]["decode_tok_s"] for c in configs], width, label=model)
        axes[1].bar(xs, [rows[c]["brief_s"] * 1000 for c in configs], width, label=model)
    for ax, title in zip(axes, ["decode tokens/s (median)", "brief answer, end to end (ms, median)"]):
        ax.set_xticks(np.arange(len(configs)) + width * (len(models) - 1) / 2, configs, rotation=35, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path)


def _bound_reading(results: list[dict], bw: float) -> str:
    """What the bandwidth bound says: a model that fits the CPU caches is bound by per-token
    overhead; one that does not is judged by how close decode comes to streaming its weights."""
    big = [r for r in results if r["weight_bytes"] > CACHE_BYTES]
    if not big:
        return ("- These models fit the CPU caches, so decode is bound by per-token overhead (Python, kernel "
                "launches), not by DRAM.")
    best = max(big, key=lambda r: r["decode_tok_s"] * r["weight_bytes"])
    return (f"- Closest to the DRAM bound: {best['model']} {best['backend']} {best['quant']} at "
            f"{best['decode_tok_s'] * best['weight_bytes'] / bw:.2f} of it ({best['decode_tok_s']:.0f} of "
            f"{bw / best['weight_bytes']:.0f} tok/s).")


def render(report: dict, figure: str = "inference.png") -> str:
    bw = report["bandwidth_bytes_s"]
    lines = [
        "# Inference on this CPU",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; measured copy bandwidth {bw / 1e9:.1f} GB/s (read + write, "
        f"{report['bandwidth_mib']} MiB numpy copy, median of 5).  ",
        f"Each row: a fresh process, one warm-up, {report['queries']} queries x {report['repeats']} repeats, greedy, "
        f"max {report['max_tokens']} tokens. Medians.",
        "",
        "Columns: *file* = what the backend loads; *TTFT* = time to first token, prompt included; *decode* = "
        "tokens after the first per second; *brief* = a whole `brief` answer end to end (target < "
        f"{BRIEF_TARGET_S:.0f} s); *RSS* = peak resident memory of the process during requests (its baseline "
        "before the runtime was imported and the model loaded in brackets); *bound* = copy bandwidth / weight "
        "bytes, the decode rate if every token had to stream the weights from DRAM; *ratio* = decode / bound; "
        "*TTFT ratio* = the time one read of the weights takes at that bandwidth / the measured TTFT (the prompt "
        "pass reads every weight at least once).",
        "",
        *reading(report),
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in report["results"]):
        rows = [r for r in report["results"] if r["model"] == model]
        lines += [f"## {model}", "", f"Checkpoint `{rows[0]['source']}`.", "",
                  "| backend | quant | file MiB | load s | TTFT ms | decode tok/s | brief ms (max) | brief < 2 s | "
                  "RSS MiB (baseline) | bound tok/s | ratio | TTFT ratio |",
                  "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for r in rows:
            bound = bw / r["weight_bytes"]
            lines.append(
                f"| {r['backend']} | {r['quant']} | {r['file_bytes'] / 2**20:.2f} | {r['load_s']:.2f} | "
                f"{r['ttft_s'] * 1000:.1f} | {r['decode_tok_s']:.0f} | {r['brief_s'] * 1000:.0f} "
                f"({r['brief_max_s'] * 1000:.0f}) | {'yes' if r['brief_max_s'] < BRIEF_TARGET_S else 'NO'} | "
                f"{r['peak_rss'] / 2**20:.0f} ({r['baseline_rss'] / 2**20:.0f}) | {bound:.0f} | "
                f"{r['decode_tok_s'] / bound:.2f} | {r['weight_bytes'] / bw / r['ttft_s']:.3f} |")
        lines.append("")
    lines += [f"![decode rate and brief answer time]({figure})", ""]
    return "\n".join(lines)


# The target size: the qwen3-32b preset's student (compress.run --dry-run: 2.97B parameters)
# as GGUF q4_k_m, whose mix of Q4_K / Q6_K averages about 4.9 bits per weight.
TARGET_PARAMS, TARGET_BITS = 2.97e9, 4.9


def reading(report: dict) -> list[str]:
    """What the table says, computed from it."""
    results, bw = report["results"], report["bandwidth_bytes_s"]
    lines = ["## Reading", ""]
    for model in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == model]
        best = max(rows, key=lambda r: r["decode_tok_s"])
        torch_row = next((r for r in rows if r["backend"] == "torch"), None)
        lines.append(f"- {model}: fastest decode {best['backend']} {best['quant']} at {best['decode_tok_s']:.0f} tok/s"
                     + (f", {best['decode_tok_s'] / torch_row['decode_tok_s']:.0f}x torch's; torch's peak RSS "
                        f"{torch_row['peak_rss'] / 2**20:.0f} MiB against {best['peak_rss'] / 2**20:.0f} MiB"
                        if torch_row else "") + ".")
    worst = max(results, key=lambda r: r["brief_max_s"])
    met = sum(r["brief_max_s"] < BRIEF_TARGET_S for r in results)
    who = "Every row answers" if met == len(results) else f"{met} of {len(results)} rows answer"
    lines.append(f"- {who} `brief` queries (median {statistics.median(r['brief_tokens'] for r in results):.0f} "
                 f"tokens) in under {BRIEF_TARGET_S:.0f} s: the slowest was {worst['backend']} {worst['quant']} on "
                 f"{worst['model']} at {worst['brief_max_s'] * 1000:.0f} ms.")
    lines.append(_bound_reading(results, bw))
    target_bytes = TARGET_PARAMS * TARGET_BITS / 8
    bound = bw / target_bytes
    tokens = statistics.median(r["brief_tokens"] for r in results)
    lines.append(f"- Not measured here, computed: the qwen3-32b preset's 2.97B student as q4_k_m is about "
                 f"{target_bytes / 1e9:.1f} GB, so this machine's bandwidth allows at most {bound:.1f} tok/s and a "
                 f"{tokens:.0f}-token brief answer would take at least {tokens / bound:.1f} s before the prompt is read. "
                 "The 2 s target at that size needs a GPU, or a device with more memory bandwidth.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a checkpoint to measure (repeatable)")
    parser.add_argument("--corpus", default=None, help="corpus directory (queries come from its train split)")
    parser.add_argument("--out", default=str(ROOT / "docs/results/inference.md"))
    parser.add_argument("--work", default=str(ROOT / "runs/bench-inference"), help="where exports are kept")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--only", default=None, help="comma-separated backends to run (default: all)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    add_render_flag(parser)
    args = parser.parse_args(argv)

    out = Path(args.out)
    if rendered_again(args, out, lambda report: render(report, out.with_suffix(".png").name)):
        return 0
    if args.child:  # one target, in its own process; prints one JSON line
        target = Target(**json.loads(args.child))
        print(json.dumps(run_target(target, bench_queries(args.corpus), args.repeats, args.max_tokens)))
        return 0

    models = dict(spec.split("=", 1) for spec in args.model)
    if not models or not args.corpus:
        parser.error("give at least one --model NAME=DIR and --corpus")
    configs = CONFIGS if not args.only else tuple(c for c in CONFIGS if c[0] in args.only.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    targets = export_targets(models, work, configs)
    bandwidth = copy_bandwidth()
    results = []
    for target in targets:
        result = run_in_child(target, args.corpus, args.repeats, args.max_tokens)
        print(f"{target.model:12s} {target.backend:9s} {target.quant:7s} decode {result['decode_tok_s']:8.0f} tok/s  "
              f"TTFT {result['ttft_s'] * 1000:7.1f} ms  brief {result['brief_s'] * 1000:7.0f} ms  "
              f"RSS {result['peak_rss'] / 2**20:5.0f} MiB", flush=True)
        results.append(result)
    report = {
        "command": reproduce_command("bench.inference", argv if argv is not None else sys.argv[1:], Path(args.out),
                                     "inference.md"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "bandwidth_bytes_s": bandwidth, "bandwidth_mib": 512,
        "queries": len(bench_queries(args.corpus)), "repeats": args.repeats, "max_tokens": args.max_tokens,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=2))
    plot(results, out.with_suffix(".png"))
    write_atomic(out, render(report, out.with_suffix(".png").name))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
