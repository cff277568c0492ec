"""docs/results/qins.md from bench.qins's report: the reading of each model's rows, the verdict
and the tables."""

from __future__ import annotations


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
