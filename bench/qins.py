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

from bench import add_render_flag, rendered_again, reproduce_command
from bench.qins_report import render
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


class _ModelBench:
    """One model through every codec: the rows measured so far and the timings still to run."""

    def __init__(self, model_dir: str, corpus: str, work: Path, args):
        from models.load import LoadOptions, load_model

        self.model_dir, self.work, self.args = str(model_dir), work, args
        work.mkdir(parents=True, exist_ok=True)
        self.fp32, tokenizer = load_model(self.model_dir, LoadOptions(dtype="float32", device="cpu"))
        original, self.tied = qins.model_tensors(self.fp32)
        self.original = {k: v.detach().clone() for k, v in original.items()}
        self.embeddings = {f"{n}.weight" for n, m in self.fp32.named_modules() if isinstance(m, nn.Embedding)}
        self.rows = split_rows(corpus, "test", args.limit, seed=0)
        self.sequences = encode_rows(self.rows, tokenizer, args.max_length)
        self.two_d = {k: v for k, v in self.original.items() if v.ndim == 2}
        self.n_weights = sum(v.numel() for v in self.two_d.values())
        self.results: list[Row] = []
        self.timing: list[tuple] = []
        self.gguf_notes: dict[str, list[str]] = {}

    def quality(self, row: Row, model: nn.Module) -> None:
        errors = weight_errors(self.original, model, self.embeddings)
        for key, value in errors.items():
            setattr(row, key, value)
        metrics = forced_metrics(model, self.fp32, self.sequences, self.args.batch_size)
        row.kl, row.top1_agreement, row.perplexity = metrics["kl"], metrics["top1_agreement"], metrics["perplexity"]

    def add(self, row: Row, model: nn.Module | None = None, gguf: Path | None = None) -> None:
        """Keep `row` and queue its speed measurement (torch `model` or llama.cpp `gguf`)."""
        if self.args.decode_tokens > 0:
            self.timing.append((row, model, gguf))
        self.results.append(row)
        print(f"  {row.variant:<54} {row.file_bytes:>10,} B  {row.bits_per_weight:6.2f} b/w  "
              f"err {row.linear_rel_error if row.linear_rel_error is not None else float('nan'):.4f}  "
              f"KL {row.kl if row.kl is not None else float('nan'):.4f}", flush=True)

    def reference(self) -> None:
        """fp32: the checkpoint as it is."""
        st = Path(self.model_dir) / "model.safetensors"
        ref = Row("fp32 (safetensors)", "torch", str(st), st.stat().st_size, 4 * self.n_weights, self.n_weights,
                  0.0, 0.0, 0.0 if self.embeddings & set(self.two_d) else None, 0.0, 1.0, None,
                  note="the reference: KL and error 0 by definition")
        ref.perplexity = forced_metrics(self.fp32, self.fp32, self.sequences, self.args.batch_size)["perplexity"]
        self.add(ref, self.fp32)

    def int8(self) -> None:
        """Plain int8: one signed byte a weight + a per-row scale, decoded to float on every forward."""
        path = self.work / "int8.safetensors"
        qins.save_int8(self.fp32, path)
        wb, wv = int8_weight_bytes(path)
        row = Row("int8, per-row absmax (safetensors)", "torch", str(path), path.stat().st_size, wb, wv,
                  note="int8 codes + per-row scale; decoded on every forward")
        model = qins.load_int8(path, self.model_dir)
        self.quality(row, model)
        self.add(row, model)

    def containers(self) -> None:
        """The QINS container: int8 levels through the same coder, then QINS proper."""
        for variant, config, note in CONTAINERS:
            path = self.work / f"{config.grid}-{config.embedding}.qins"
            started = time.perf_counter()
            report = qins.save_model_qins(self.fp32, path, config)
            encode_s = time.perf_counter() - started
            started = time.perf_counter()
            model = qins.load_qins(path, self.model_dir)
            load_s = time.perf_counter() - started
            wb, wv = container_weight_bytes(path)
            zeros = [t.zeros for t in report.tensors if t.zeros is not None]
            bits = section_bits(path)
            parts = (f"codes {bits['stream']:.2f}, signs {bits['signs']:.2f}, scales {bits['scales']:.2f}, "
                     f"zero pattern {bits['mask']:.2f}, code tables + block lengths {bits['lengths'] + bits['blocks']:.2f}")
            row = Row(variant, "torch", str(path), path.stat().st_size, wb, wv,
                      note=f"{note}; encode {encode_s:.1f} s, load {load_s:.1f} s; "
                      f"{100 * float(np.mean(zeros)):.2f}% exact zeros; bits per coded weight: {parts}")
            self.quality(row, model)
            self.add(row, model)
            if config.grid == "inverse" and config.embedding == "coded":
                cached = copy.copy(row)
                cached.variant, cached.note = "QINS (inverse grid), weights decoded once", "same file; dense weights cached at load"
                self.add(cached, qins.load_qins(path, self.model_dir, cache_weights=True))

    def ggufs(self) -> None:
        """GGUF through export.gguf; quality from the dequantized tensors, speed from llama.cpp."""
        for quant in self.args.gguf:
            path = self.work / f"{quant}.gguf"
            try:
                from export.gguf import export_gguf

                report = export_gguf(self.model_dir, path, quant, progress=False)
            except Exception as exc:  # llama-cpp-python missing for K-quants, or exporter absent
                print(f"  skipping GGUF {quant}: {exc}", file=sys.stderr)
                self.gguf_notes[quant] = [f"not measured: {exc}"]
                continue
            self.gguf_notes[quant] = report.notes
            arrays, wb, wv, types = gguf_weights(path, list(self.original), self.fp32.config.num_hidden_layers)
            types_text = ", ".join(f"{n} x {t}" for t, n in sorted(types.items()))
            row = Row(f"GGUF {quant}", "llama.cpp", str(path), path.stat().st_size, wb, wv,
                      note=f"tensors: {types_text}" + ("; file includes the tokenizer" if quant == "f32" else ""))
            if quant != "f32":
                model = copy.deepcopy(self.fp32)
                with torch.no_grad():
                    state, _ = qins.model_tensors(model)
                    for name, array in arrays.items():
                        state[name].copy_(torch.tensor(array).reshape(state[name].shape))
                self.quality(row, model)
            else:
                row.linear_rel_error = row.linear_max_rel_error = row.embedding_rel_error = 0.0
                row.kl = 0.0
            self.add(row, gguf=path)

    def report(self) -> dict:
        fp32, config = self.fp32, self.fp32.config
        return {
            "model": self.model_dir,
            "parameters": sum(p.numel() for p in fp32.parameters()),
            "layers": config.num_hidden_layers,
            "hidden": config.hidden_size,
            "intermediate": config.intermediate_size,
            "vocab": config.vocab_size,
            "tied": self.tied,
            "weights_2d": self.n_weights,
            "eval_rows": len(self.rows),
            "eval_tokens": sum(s.answer_tokens for s in self.sequences),
            "threads": torch.get_num_threads(),
            "gguf_notes": self.gguf_notes,
            "rows": [{**asdict(r), "bits_per_weight": r.bits_per_weight} for r in self.results],
        }


CONTAINERS = (
    ("int8 levels + Huffman (QINS container, linear grid)", qins.QINSConfig(grid="linear"),
     "the int8 levels above, entropy coded like QINS"),
    ("int5 levels + Huffman (QINS container, linear15 grid)", qins.QINSConfig(grid="linear15"),
     "sign + magnitude 0..15 per-row absmax, entropy coded: a linear grid near QINS's size"),
    ("int4 levels + Huffman (QINS container, linear7 grid)", qins.QINSConfig(grid="linear7"),
     "sign + magnitude 0..7 per-row absmax, entropy coded"),
    ("QINS (inverse grid), embedding coded", qins.QINSConfig(grid="inverse"), "decoded on every forward"),
    ("QINS (inverse grid), embedding fp16", qins.QINSConfig(grid="inverse", embedding="fp16"),
     "token embedding / tied lm_head kept as raw fp16"),
)


def bench_model(model_dir: str, corpus: str, work: Path, args) -> dict:
    bench = _ModelBench(model_dir, corpus, work, args)
    bench.reference()
    bench.int8()
    bench.containers()
    bench.ggufs()
    time_rows(bench.timing, bench.model_dir, bench.rows[0]["messages"], args.decode_tokens, args.repeats,
              torch.get_num_threads())
    for row in bench.results:
        print(f"  {row.variant:<54} {row.tokens_per_s or float('nan'):8.1f} tok/s ({row.engine})", flush=True)
    return bench.report()


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
    add_render_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    def restamp(report: dict) -> str:
        report["stem"] = out.stem
        if args.note:
            report["note"] = args.note
        return render(report)

    if rendered_again(args, out, restamp):
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
