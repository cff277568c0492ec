"""QINS against plain int8 and GGUF q8_0 / q4_k_m on the same models; writes docs/results/qins.md.

    python -m bench.qins --model runs/demo/heal/student --model runs/demo/teacher --corpus runs/demo/data

For every model and every codec: bytes on disk (the whole file, and the 2-D weights alone as bits
per weight), the relative reconstruction error ||W - W^|| / ||W|| of the decoder's linear weights
(pooled, and the worst single tensor) and of the token embedding, teacher-forced KL(fp32 || codec)
with top-1 agreement and perplexity on held-out test rows, and the greedy decode rate.

Quality is always measured in torch with each codec's reconstructed weights (GGUF tensors are
read back and dequantized with gguf's numpy code), so KL reflects the weights alone. Speed is
measured by the runtime each format is meant for: torch for the safetensors / QINS rows, llama.cpp
for the GGUF rows, both through models.backends with the same prompt, thread count and token cap.
Torch against llama.cpp speed compares runtimes, not codecs.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import reproduce_command
from compress.calibration import encode_rows, split_rows
from compress.evaluate import forced_metrics
from core.artifacts import write_atomic
from export import qins

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "results" / "qins.md"
GGUF_QUANTS = ("f32", "q8_0", "q4_k_m")


@dataclass
class Row:
    """One codec applied to one model."""

    variant: str
    engine: str  # the runtime that measured tokens/s
    file: str
    file_bytes: int
    weight_bytes: int  # bytes of the 2-D weights alone (scales, tables and zero/sign data included)
    weights: int  # values in those 2-D weights
    linear_rel_error: float | None = None
    linear_max_rel_error: float | None = None
    embedding_rel_error: float | None = None
    kl: float | None = None
    top1_agreement: float | None = None
    perplexity: float | None = None
    tokens_per_s: float | None = None
    decode_tokens: int | None = None
    note: str = ""

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / max(1, self.weights)


# ---------------------------------------------------------------------------------------------
# Measurements


def reconstructed(model: nn.Module) -> dict[str, torch.Tensor]:
    """`<module>.weight` -> the dense weight the model computes with, for every Linear and
    Embedding, coded or plain."""
    out = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (qins.CodedLinear, qins.CodedEmbedding)):
                out[f"{name}.weight"] = module.coded.dense()
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                out[f"{name}.weight"] = module.weight.detach()
    return out


def weight_errors(original: dict[str, torch.Tensor], model: nn.Module, embeddings: set[str]) -> dict:
    got = reconstructed(model)
    sums = {"linear": [0.0, 0.0], "embedding": [0.0, 0.0]}
    worst = 0.0
    for name, w in original.items():
        if w.ndim != 2:
            continue
        diff = float(torch.sum((got[name].double() - w.double()) ** 2))
        norm = float(torch.sum(w.double() ** 2))
        part = "embedding" if name in embeddings else "linear"
        sums[part][0] += diff
        sums[part][1] += norm
        if part == "linear" and norm:
            worst = max(worst, (diff / norm) ** 0.5)

    def pooled(part: str) -> float | None:
        return (sums[part][0] / sums[part][1]) ** 0.5 if sums[part][1] else None

    return {"linear_rel_error": pooled("linear"), "linear_max_rel_error": worst,
            "embedding_rel_error": pooled("embedding")}


def time_rows(jobs: list[tuple], model_dir: str, messages: list[dict], max_tokens: int, repeats: int,
              threads: int) -> None:
    """Fill in each row's decode rate: the median over `repeats` greedy answers (tokens after the
    first over the time after the first). Answers are taken in rounds over all rows, so a slow
    spell of a shared machine falls on every row alike rather than on whichever ran then."""
    if not jobs:
        return
    from models.backends import GenerationOptions, open_backend

    live = []
    for row, model, gguf in jobs:
        try:
            if gguf is not None:
                backend = open_backend("llamacpp", str(gguf), threads=threads, n_ctx=1024)
            else:
                backend = open_backend("torch", model_dir, device="cpu", dtype="float32")
                backend.net = model  # the same decode loop and statistics, the codec's model inside
            backend.complete(messages, GenerationOptions(max_tokens=8))  # warm-up
        except Exception as exc:  # a runtime that is missing or cannot load the file
            print(f"  no speed for {row.variant}: {exc}", file=sys.stderr)
            row.note += f"; no speed: {exc}"
            continue
        live.append((row, backend, []))
    options = GenerationOptions(max_tokens=max_tokens)
    for _ in range(repeats):
        for row, backend, rates in live:
            stats = backend.complete(messages, options).stats
            if stats.tokens_per_s:
                rates.append(stats.tokens_per_s)
            row.decode_tokens = stats.completion_tokens
    for row, backend, rates in live:
        row.tokens_per_s = statistics.median(rates) if rates else None
        backend.close()


def gguf_weights(path: Path, names: list[str], num_layers: int) -> tuple[dict[str, np.ndarray], int, int, dict]:
    """HF name -> dequantized array, the bytes and values of the 2-D tensors, and GGML types."""
    import gguf

    from export.gguf import gguf_name

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, num_layers)
    to_hf = {gguf_name(n, name_map): n for n in names}
    reader = gguf.GGUFReader(str(path))
    out, weight_bytes, weights, types = {}, 0, 0, {}
    for t in reader.tensors:
        if t.name not in to_hf:
            raise ValueError(f"{path}: tensor {t.name} maps to no weight of the model")
        out[to_hf[t.name]] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        if len(t.shape) == 2:
            weight_bytes += int(t.n_bytes)
            weights += int(np.prod(t.shape))
    return out, weight_bytes, weights, types


def container_weight_bytes(path: Path) -> tuple[int, int]:
    header = qins.read_header(path)
    two_d = [t for t in header["tensors"] if len(t["shape"]) == 2]
    return sum(t["nbytes"] for t in two_d), sum(int(np.prod(t["shape"])) for t in two_d)


def section_bits(path: Path) -> dict[str, float]:
    """Bits per coded value that each part of the container's coded tensors takes."""
    header = qins.read_header(path)
    coded = [t for t in header["tensors"] if t["kind"] == "coded"]
    values = sum(int(np.prod(t["shape"])) for t in coded)
    totals = dict.fromkeys(qins.SECTIONS, 0)
    for t in coded:
        for name, (_, size) in t["sections"].items():
            totals[name] += size
    return {name: 8 * size / max(1, values) for name, size in totals.items()}


def int8_weight_bytes(path: Path) -> tuple[int, int]:
    from safetensors import safe_open

    size = values = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if key.endswith((".int8", ".scale")):
                t = f.get_tensor(key)
                size += t.numel() * t.element_size()
                values += t.numel() if key.endswith(".int8") else 0
    return size, values


# ---------------------------------------------------------------------------------------------
# One model


def bench_model(model_dir: str, corpus: str, work: Path, args) -> dict:
    from models.load import LoadOptions, load_model

    model_dir = str(model_dir)
    work.mkdir(parents=True, exist_ok=True)
    fp32, tokenizer = load_model(model_dir, LoadOptions(dtype="float32", device="cpu"))
    original, tied = qins.model_tensors(fp32)
    original = {k: v.detach().clone() for k, v in original.items()}
    embeddings = {f"{n}.weight" for n, m in fp32.named_modules() if isinstance(m, nn.Embedding)}
    rows = split_rows(corpus, "test", args.limit, seed=0)
    sequences = encode_rows(rows, tokenizer, args.max_length)
    messages = rows[0]["messages"]
    threads = torch.get_num_threads()
    two_d = {k: v for k, v in original.items() if v.ndim == 2}
    n_weights = sum(v.numel() for v in two_d.values())
    results: list[Row] = []

    def quality(row: Row, model: nn.Module) -> None:
        errors = weight_errors(original, model, embeddings)
        for key, value in errors.items():
            setattr(row, key, value)
        metrics = forced_metrics(model, fp32, sequences, args.batch_size)
        row.kl, row.top1_agreement, row.perplexity = metrics["kl"], metrics["top1_agreement"], metrics["perplexity"]

    timing: list[tuple] = []

    def speed(row: Row, model: nn.Module | None = None, gguf: Path | None = None) -> None:
        if args.decode_tokens > 0:
            timing.append((row, model, gguf))

    def log(row: Row) -> None:
        print(f"  {row.variant:<54} {row.file_bytes:>10,} B  {row.bits_per_weight:6.2f} b/w  "
              f"err {row.linear_rel_error if row.linear_rel_error is not None else float('nan'):.4f}  "
              f"KL {row.kl if row.kl is not None else float('nan'):.4f}", flush=True)

    # fp32 reference: the checkpoint as it is.
    st = Path(model_dir) / "model.safetensors"
    ref = Row("fp32 (safetensors)", "torch", str(st), st.stat().st_size, 4 * n_weights, n_weights,
              0.0, 0.0, 0.0 if embeddings & set(two_d) else None, 0.0, 1.0, None,
              note="the reference: KL and error 0 by definition")
    ref.perplexity = forced_metrics(fp32, fp32, sequences, args.batch_size)["perplexity"]
    speed(ref, fp32)
    results.append(ref)
    log(ref)

    # Plain int8: one signed byte a weight + a per-row scale, decoded to float on every forward.
    path = work / "int8.safetensors"
    qins.save_int8(fp32, path)
    wb, wv = int8_weight_bytes(path)
    row = Row("int8, per-row absmax (safetensors)", "torch", str(path), path.stat().st_size, wb, wv,
              note="int8 codes + per-row scale; decoded on every forward")
    model = qins.load_int8(path, model_dir)
    quality(row, model)
    speed(row, model)
    results.append(row)
    log(row)

    # The QINS container: int8 levels through the same coder, then QINS proper.
    for variant, config, note in (
        ("int8 levels + Huffman (QINS container, linear grid)", qins.QINSConfig(grid="linear"),
         "the int8 levels above, entropy coded like QINS"),
        ("int5 levels + Huffman (QINS container, linear15 grid)", qins.QINSConfig(grid="linear15"),
         "sign + magnitude 0..15 per-row absmax, entropy coded: a linear grid near QINS's size"),
        ("int4 levels + Huffman (QINS container, linear7 grid)", qins.QINSConfig(grid="linear7"),
         "sign + magnitude 0..7 per-row absmax, entropy coded"),
        ("QINS (inverse grid), embedding coded", qins.QINSConfig(grid="inverse"), "decoded on every forward"),
        ("QINS (inverse grid), embedding fp16", qins.QINSConfig(grid="inverse", embedding="fp16"),
         "token embedding / tied lm_head kept as raw fp16"),
    ):
        path = work / f"{config.grid}-{config.embedding}.qins"
        started = time.perf_counter()
        report = qins.save_model_qins(fp32, path, config)
        encode_s = time.perf_counter() - started
        started = time.perf_counter()
        model = qins.load_qins(path, model_dir)
        load_s = time.perf_counter() - started
        wb, wv = container_weight_bytes(path)
        zeros = [t.zeros for t in report.tensors if t.zeros is not None]
        bits = section_bits(path)
        parts = (f"codes {bits['stream']:.2f}, signs {bits['signs']:.2f}, scales {bits['scales']:.2f}, "
                 f"zero pattern {bits['mask']:.2f}, code tables + block lengths {bits['lengths'] + bits['blocks']:.2f}")
        row = Row(variant, "torch", str(path), path.stat().st_size, wb, wv,
                  note=f"{note}; encode {encode_s:.1f} s, load {load_s:.1f} s; "
                  f"{100 * float(np.mean(zeros)):.2f}% exact zeros; bits per coded weight: {parts}")
        quality(row, model)
        speed(row, model)
        results.append(row)
        log(row)
        if config.grid == "inverse" and config.embedding == "coded":
            cached = copy.copy(row)
            cached.variant, cached.note = "QINS (inverse grid), weights decoded once", "same file; dense weights cached at load"
            speed(cached, qins.load_qins(path, model_dir, cache_weights=True))
            results.append(cached)
            log(cached)

    # GGUF through export.gguf; quality from the dequantized tensors, speed from llama.cpp.
    gguf_notes: dict[str, list[str]] = {}
    for quant in args.gguf:
        path = work / f"{quant}.gguf"
        try:
            from export.gguf import export_gguf

            report = export_gguf(model_dir, path, quant, progress=False)
        except Exception as exc:  # llama-cpp-python missing for K-quants, or exporter absent
            print(f"  skipping GGUF {quant}: {exc}", file=sys.stderr)
            gguf_notes[quant] = [f"not measured: {exc}"]
            continue
        gguf_notes[quant] = report.notes
        arrays, wb, wv, types = gguf_weights(path, list(original), fp32.config.num_hidden_layers)
        types_text = ", ".join(f"{n} x {t}" for t, n in sorted(types.items()))
        row = Row(f"GGUF {quant}", "llama.cpp", str(path), path.stat().st_size, wb, wv,
                  note=f"tensors: {types_text}" + ("; file includes the tokenizer" if quant == "f32" else ""))
        if quant != "f32":
            model = copy.deepcopy(fp32)
            with torch.no_grad():
                state, _ = qins.model_tensors(model)
                for name, array in arrays.items():
                    state[name].copy_(torch.tensor(array).reshape(state[name].shape))
            quality(row, model)
        else:
            row.linear_rel_error = row.linear_max_rel_error = row.embedding_rel_error = 0.0
            row.kl = 0.0
        speed(row, gguf=path)
        results.append(row)
        log(row)

    time_rows(timing, model_dir, messages, args.decode_tokens, args.repeats, threads)
    for row in results:
        print(f"  {row.variant:<54} {row.tokens_per_s or float('nan'):8.1f} tok/s ({row.engine})", flush=True)

    return {
        "model": model_dir,
        "parameters": sum(p.numel() for p in fp32.parameters()),
        "layers": fp32.config.num_hidden_layers,
        "hidden": fp32.config.hidden_size,
        "intermediate": fp32.config.intermediate_size,
        "vocab": fp32.config.vocab_size,
        "tied": tied,
        "weights_2d": n_weights,
        "eval_rows": len(rows),
        "eval_tokens": sum(s.answer_tokens for s in sequences),
        "threads": threads,
        "gguf_notes": gguf_notes,
        "rows": [{**asdict(r), "bits_per_weight": r.bits_per_weight} for r in results],
    }


# ---------------------------------------------------------------------------------------------
# Report


def _f(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _row(rows: list[dict], prefix: str) -> dict | None:
    return next((r for r in rows if r["variant"].startswith(prefix)), None)


def reading(model: dict) -> list[str]:
    """Plain statements drawn from the numbers of one model."""
    rows = model["rows"]
    q = _row(rows, "QINS (inverse grid), embedding coded")
    lines = []
    if q is None:
        return lines
    for label, other in (("int4 levels + Huffman", _row(rows, "int4 levels + Huffman")),
                         ("int5 levels + Huffman", _row(rows, "int5 levels + Huffman")),
                         ("int8 levels + Huffman", _row(rows, "int8 levels + Huffman")),
                         ("plain int8", _row(rows, "int8, per-row")),
                         ("GGUF q8_0", _row(rows, "GGUF q8_0")),
                         ("GGUF q4_k_m", _row(rows, "GGUF q4_k_m"))):
        if other is None or other.get("kl") is None:
            continue
        size = q["bits_per_weight"] / other["bits_per_weight"]
        err = q["linear_rel_error"] / other["linear_rel_error"] if other["linear_rel_error"] else float("inf")
        kl = q["kl"] / other["kl"] if other["kl"] else float("inf")
        smaller = "smaller" if size < 1 else "larger"
        lines.append(
            f"QINS vs {label}: {q['bits_per_weight']:.2f} against {other['bits_per_weight']:.2f} bits/weight "
            f"({abs(1 - size) * 100:.0f}% {smaller}); linear-weight error {q['linear_rel_error']:.4f} against "
            f"{other['linear_rel_error']:.4f} ({err:.1f}x); KL {q['kl']:.4f} against {other['kl']:.4f} ({kl:.1f}x)."
        )
    smaller_and_better = [r["variant"] for r in rows
                          if r is not q and r.get("kl") is not None and r["variant"] != "fp32 (safetensors)"
                          and not r["variant"].startswith("QINS")
                          and r["bits_per_weight"] <= q["bits_per_weight"] and r["kl"] < q["kl"]]
    if smaller_and_better:
        lines.append("Smaller than or as small as QINS and closer to fp32 (lower KL): "
                     + ", ".join(smaller_and_better) + ".")
    else:
        others = [r for r in rows if r.get("kl") is not None and not r["variant"].startswith(("QINS", "fp32"))]
        if others:
            small = min(others, key=lambda r: r["bits_per_weight"])
            lines.append(f"Every other codec here is larger than QINS; the smallest, {small['variant']}, takes "
                         f"{small['bits_per_weight']:.2f} bits/weight at KL {small['kl']:.4f} against QINS's "
                         f"{q['bits_per_weight']:.2f} bits/weight at KL {q['kl']:.4f}.")
    return lines


def verdict(report: dict) -> list[str]:
    """The headline per model: what beats QINS at its size, and what QINS saves against 8 bits."""
    out = []
    for model in report["models"]:
        rows = model["rows"]
        q = _row(rows, "QINS (inverse grid), embedding coded")
        if q is None:
            continue
        name = f"`{model['model']}`"
        better = sorted((r for r in rows if r.get("kl") is not None and not r["variant"].startswith(("QINS", "fp32"))
                         and r["bits_per_weight"] <= q["bits_per_weight"] and r["kl"] < q["kl"]),
                        key=lambda r: r["bits_per_weight"])
        if better:
            b = better[0]
            out.append(f"{name}: QINS is dominated. {b['variant']} takes {b['bits_per_weight']:.2f} bits/weight "
                       f"against QINS's {q['bits_per_weight']:.2f} and is closer to fp32 (KL {b['kl']:.4f} "
                       f"against {q['kl']:.4f}, linear-weight error {b['linear_rel_error']:.4f} against "
                       f"{q['linear_rel_error']:.4f}).")
        eight = _row(rows, "int8, per-row")
        if eight is not None and eight.get("kl") is not None:
            out.append(f"{name}: against plain int8, QINS saves {100 * (1 - q['file_bytes'] / eight['file_bytes']):.0f}% "
                       f"of the file ({q['file_bytes']:,} against {eight['file_bytes']:,} bytes) at "
                       f"{q['linear_rel_error'] / eight['linear_rel_error']:.0f}x the weight error and "
                       f"{q['kl'] / eight['kl']:.0f}x the KL.")
        emb = _row(rows, "QINS (inverse grid), embedding fp16")
        if emb is not None and emb.get("kl") is not None:
            side = "" if eight is None else (
                f", {'above' if emb['bits_per_weight'] > eight['bits_per_weight'] else 'below'} plain int8's "
                f"{eight['bits_per_weight']:.2f}")
            out.append(f"{name}: keeping the tied embedding in fp16 cuts QINS's KL by "
                       f"{100 * (1 - emb['kl'] / q['kl']):.0f}% ({q['kl']:.4f} to {emb['kl']:.4f}) at "
                       f"{emb['bits_per_weight']:.2f} bits/weight{side}.")
    return out


def render(report: dict) -> str:
    lines = [
        "# QINS weight codec against int8 and GGUF",
        "",
        f"Reproduce: `{report['command']}` ({report['minutes']:.1f} min on {report['machine']})."
        + (f" {report['note']}" if report.get("note") else ""),
        "",
        "QINS stores each weight as a sign and a code s in 1..255 with w = sign · scale / s (scale = the "
        "row's max |w|, code 0 = exact zero), decoded through a 256-entry table, then codes the zero "
        "pattern, signs and codes losslessly (canonical Huffman, length-limited to 15 bits) in one "
        "checksummed file (`export/qins/`). Its grid is the reciprocal of a uniform one: levels crowd "
        "near zero (scale/255, scale/254, ...) and thin out towards the row maximum, with nothing between "
        "scale/2 and scale and nothing between scale/3 and scale/2. Neural-network weights are spread "
        "roughly normally with the row maximum several standard deviations out, so most weights fall "
        "where the grid is coarse relative to them.",
        "",
        "Columns: *file* = bytes on disk of the whole file (norms and, for GGUF, the tokenizer "
        "included); *bits/w* = bytes of the 2-D weights alone (embedding and projections, with their "
        "scales, code tables, zero and sign data) × 8 / their values; *err* = ||W − Ŵ|| / ||W|| pooled "
        "over the decoder's linear weights (worst single tensor in brackets); *emb err* = the same for "
        "the token embedding (tied to lm_head); *KL* = KL(fp32 || codec) in nats per answer token, "
        "teacher-forced on held-out test rows, computed in torch with each codec's reconstructed "
        "weights; *top-1* = agreement with the fp32 model's next token; *ppl* = perplexity of the "
        "reference answers; *tok/s* = greedy decode rate (median of "
        f"{report['repeats']} answers of at most {report['decode_tokens']} tokens after a warm-up, taken "
        f"in rounds over all rows of a model) with {report['threads']} thread(s), in the engine named.",
        "",
    ]
    lines += ["## Verdict", ""] + [f"- {v}" for v in verdict(report)] + [""]
    for model in report["models"]:
        lines += [
            f"## `{model['model']}`",
            "",
            f"{model['parameters']:,} parameters ({model['layers']} layers, hidden {model['hidden']}, FFN "
            f"{model['intermediate']}, vocabulary {model['vocab']}, embedding tied to lm_head); "
            f"{model['weights_2d']:,} values in 2-D weights. KL on {model['eval_rows']} test rows "
            f"({model['eval_tokens']:,} answer tokens).",
            "",
            "| codec | file | bits/w | err (worst) | emb err | KL | top-1 | ppl | tok/s | engine |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in model["rows"]:
            err = _f(r["linear_rel_error"], "{:.4f}")
            if r["linear_max_rel_error"]:
                err += f" ({r['linear_max_rel_error']:.4f})"
            lines.append(
                f"| {r['variant']} | {r['file_bytes']:,} | {r['bits_per_weight']:.2f} | {err} | "
                f"{_f(r['embedding_rel_error'], '{:.4f}')} | {_f(r['kl'], '{:.4f}')} | "
                f"{_f(r['top1_agreement'], '{:.3f}')} | {_f(r['perplexity'], '{:.2f}')} | "
                f"{_f(r['tokens_per_s'], '{:.0f}')} | {r['engine']} |"
            )
        lines += ["", "Notes per row:", ""]
        lines += [f"- {r['variant']}: {r['note']}" for r in model["rows"] if r["note"]]
        for quant, notes in model["gguf_notes"].items():
            lines += [f"- GGUF {quant} (export.gguf): {n}" for n in notes]
        lines += ["", "Reading:", ""] + [f"- {s}" for s in reading(model)] + [""]
    lines += [
        "## What the numbers do and do not say",
        "",
        "- Error and KL isolate the weights: every codec's weights are reconstructed to float32 and run "
        "in the same torch model. llama.cpp additionally rounds activations to 8 bits inside its "
        "quantized dot products; that is not in these KL figures.",
        "- Perplexity is of the reference answers for held-out places, which the fp32 models never "
        "learned (their own perplexity there is above 1000). A codec with a lower perplexity than fp32 "
        "there is a less confident copy, not a better guide; KL and top-1 are the measures of "
        "preservation.",
        "- tok/s of torch rows and of llama.cpp rows measure different runtimes. Within torch, every "
        "coded row rebuilds each dense weight from its codes on every forward. Plain int8 does that "
        "with a conversion and a multiply; the QINS container rows (the int8 / int5 / int4 levels "
        "included) use one module that gathers from the 256-entry table, which torch runs several "
        "times slower, so their speeds match each other and not plain int8's. `weights decoded "
        "once` is the QINS file decoded at load, after which it runs as fp32 does (and takes fp32's "
        "memory).",
        "- The Huffman gain is on disk only. In memory, `QINSLinear` holds a byte of code and a bit of "
        "sign per weight (9 bits, more than int8's 8) plus the per-row scales.",
        "- `GGUF q4_k_m` is what llama.cpp writes for that request on these models: K-quant blocks "
        "span 256 values of a row and every row here is shorter or not a multiple of 256, so the "
        "tensors fell back to the types listed in the notes (no tensor is actually Q4_K). On a "
        "full-size Qwen3 the q4_k_m row would be a real 4-bit K-quant.",
        "- These are proxy models of 1.5M–2.9M parameters; per-row scales, code tables and block lengths "
        "weigh more per weight here than they would on a large model.",
        "",
        f"Full numbers: [{report['stem']}.json]({report['stem']}.json).",
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.qins", description=__doc__.split("\n\n")[0],
                                     epilog="Example: python -m bench.qins --model runs/demo/heal/student "
                                     "--model runs/demo/teacher --corpus runs/demo/data")
    parser.add_argument("--model", action="append", required=False, help="checkpoint directory (repeatable)")
    parser.add_argument("--corpus", default="runs/demo/data", help="corpus directory with test.jsonl")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the Markdown report; a .json goes next to it")
    parser.add_argument("--work", default="runs/bench-qins", help="where the encoded files are written")
    parser.add_argument("--limit", type=int, default=64, help="test rows for KL (seeded sample)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=64, help="token cap of each timed answer (0: no timing)")
    parser.add_argument("--repeats", type=int, default=5, help="timed answers per row (median; rounds over all rows)")
    parser.add_argument("--gguf", nargs="*", default=list(GGUF_QUANTS), help="GGUF quants to compare")
    parser.add_argument("--note", default="", help="a sentence on the run's conditions, printed under the command")
    parser.add_argument("--render", metavar="JSON", help="only re-render the Markdown from a report JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.render:
        report = json.loads(Path(args.render).read_text(encoding="utf-8"))
        report["stem"] = out.stem
        if args.note:
            report["note"] = args.note
        write_atomic(out, render(report))
        print(f"wrote {out}")
        return 0
    models = args.model or ["runs/demo/heal/student", "runs/demo/teacher"]
    started = time.perf_counter()
    report = {
        "command": reproduce_command("bench.qins", argv if argv is not None else sys.argv[1:], out, "qins.md"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "threads": torch.get_num_threads(), "repeats": args.repeats, "decode_tokens": args.decode_tokens,
        "corpus": args.corpus, "stem": out.stem, "note": args.note, "models": [],
    }
    for model_dir in models:
        print(f"{model_dir}:", flush=True)
        report["models"].append(bench_model(model_dir, args.corpus, Path(args.work) / Path(model_dir).name, args))
    report["minutes"] = (time.perf_counter() - started) / 60
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    write_atomic(out, render(report))
    print(out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
