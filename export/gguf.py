"""GGUF export for llama.cpp: a Qwen3 or Llama checkpoint directory in, one quantized `.gguf` file out.

    python -m export.gguf --model runs/demo/heal/student --out out/student-q8_0.gguf --quant q8_0

Everything is written through the `gguf` package's writer: the `qwen3` or `llama` hyper-parameters,
the tensors under llama.cpp's names (gguf's own name map; a Llama's q/k rows reordered for
llama.cpp's interleaved rope), the byte-level BPE vocabulary (model `gpt2`, pre-tokenizer `qwen2` or
`smollm` by how the tokenizer splits text) with its merges and special ids, and the chat template,
so a GGUF answers the same ChatML prompt the checkpoint was trained on.

`f32`, `f16`, `bf16` and `q8_0` are quantized here with gguf's numpy code. The K-quants
(`q4_k_m`, `q5_k_m`, `q6_k`) go through llama.cpp's own quantizer (llama-cpp-python's
`llama_model_quantize`) from an unquantized GGUF written first. K-quant blocks span 256 values of
a row; a tensor whose rows are shorter or not a multiple of 256 (every tensor of our CPU-sized
proxies) is stored by llama.cpp in a fallback type, and the report lists what each tensor got.

Weights are read one tensor at a time from the safetensors shards and spooled to disk, so a
32B checkpoint does not have to fit in memory.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from safetensors import safe_open
from tqdm import tqdm
from transformers import AutoTokenizer

from core.artifacts import atomic_path
from core.cli import new_parser, print_report, run_command
from models.tokenizer import QWEN2_SPLIT

# Names the CLI accepts, with the GGUF file type each one declares.
NUMPY_QUANTS = ("f32", "f16", "bf16", "q8_0")
LLAMA_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")
QUANTS = NUMPY_QUANTS + LLAMA_QUANTS
K_BLOCK = 256  # values per K-quant super-block: rows must be a multiple of this


class GGUFExportError(RuntimeError):
    """A checkpoint this exporter cannot turn into a correct GGUF (the message says why)."""


@dataclass
class GGUFReport:
    out: str
    quant: str
    bytes: int
    parameters: int
    tensor_types: dict[str, int]  # GGML type name -> number of tensors stored in it
    fallbacks: list[dict] = field(default_factory=list)  # tensors not stored in the requested type
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        types = ", ".join(f"{n} x {t}" for t, n in sorted(self.tensor_types.items()))
        lines = [f"{self.out}: {self.bytes / 2**20:.2f} MiB, {self.parameters / 1e6:.2f}M parameters, "
                 f"quant {self.quant} ({types})"]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _file_type(quant: str) -> int:
    ftype = gguf.LlamaFileType
    return {
        "f32": ftype.ALL_F32, "f16": ftype.MOSTLY_F16, "bf16": ftype.MOSTLY_BF16, "q8_0": ftype.MOSTLY_Q8_0,
        "q4_k_m": ftype.MOSTLY_Q4_K_M, "q5_k_m": ftype.MOSTLY_Q5_K_M, "q6_k": ftype.MOSTLY_Q6_K,
    }[quant]


def _tensor_type(quant: str):
    qtype = gguf.GGMLQuantizationType
    return {"f32": qtype.F32, "f16": qtype.F16, "bf16": qtype.BF16, "q8_0": qtype.Q8_0}[quant]


# ---------------------------------------------------------------------------------------------
# What goes in: config, tokenizer, tensors


@dataclass(frozen=True)
class Architecture:
    """How one transformers architecture is spelled in llama.cpp."""

    name: str  # llama.cpp's architecture name: the prefix of its hyper-parameter keys
    model_arch: object  # gguf.MODEL_ARCH member: its tensor name map
    # llama.cpp's llama graph rotates interleaved pairs of a head's dimensions, transformers rotates
    # its two halves: q/k rows are reordered on the way out, as llama.cpp's own converter does.
    interleave_rope: bool


ARCHITECTURES = {
    ("qwen3", "Qwen3ForCausalLM"): Architecture("qwen3", gguf.MODEL_ARCH.QWEN3, interleave_rope=False),
    ("llama", "LlamaForCausalLM"): Architecture("llama", gguf.MODEL_ARCH.LLAMA, interleave_rope=True),
}


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise GGUFExportError(f"no config.json in {model_dir}: not a checkpoint directory")
    config = json.loads(path.read_text())
    architecture_of(config, model_dir)
    return config


def architecture_of(config: dict, where: Path | str = "the checkpoint") -> Architecture:
    arch = (config.get("architectures") or ["?"])[0]
    found = ARCHITECTURES.get((config.get("model_type"), arch))
    if found is None:
        known = ", ".join(a for _, a in ARCHITECTURES)
        raise GGUFExportError(f"{where} is {arch} ({config.get('model_type')}); export.gguf writes {known}")
    return found


def interleave_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's rows from halves (0..d/2 | d/2..d) to pairs (0, d/2, 1, d/2 + 1, ...)."""
    rows, cols = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)


def rope_settings(config: dict) -> dict:
    """Rope base and scaling from a transformers 5 config (`rope_parameters`) or an older one
    (`rope_theta` + `rope_scaling`)."""
    params = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    factor = params.get("factor", scaling.get("factor"))
    original = params.get("original_max_position_embeddings", scaling.get("original_max_position_embeddings"))
    if kind not in ("default", "yarn", "linear"):
        raise GGUFExportError(f"rope type {kind!r} has no GGUF equivalent here (default, linear and yarn do)")
    return {"theta": float(theta), "type": kind, "factor": factor, "original_context": original}


def tokenizer_metadata(model_dir: Path, vocab_size: int) -> dict:
    """The vocabulary as llama.cpp's BPE tokenizer wants it: every id up to the model's vocab size
    (ids the tokenizer never produces become unused padding entries, as for Qwen3's 151936 rows),
    token types, merges, special ids and the chat template."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError(f"no tokenizer.json in {model_dir}: GGUF needs the fast tokenizer's vocabulary")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFExportError(f"tokenizer model {model.get('type')!r}: only byte-level BPE maps to llama.cpp's gpt2 model")
    pre = pre_tokenizer_name(spec)

    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in spec.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        token, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.eos_token_id is None:
        raise GGUFExportError(f"the tokenizer in {model_dir} has no eos token: generation could never stop")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {
        "tokens": tokens, "types": types, "merges": merges, "pre": pre,
        "eos": tok.eos_token_id, "pad": pad, "unk": tok.unk_token_id,
        "add_bos": bool(getattr(tok, "add_bos_token", False)),
        # Qwen never prepends a bos; llama.cpp still wants an id, and Qwen's own GGUFs use <|endoftext|>.
        "bos": tok.bos_token_id if tok.bos_token_id is not None else pad,
        "chat_template": tok.chat_template,
    }


def _pre_tokenizer_steps(spec: dict) -> list[dict]:
    pre = spec.get("pre_tokenizer") or {}
    return pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE: `qwen2` (Qwen2's split regex,
    then bytes), `smollm` (single digits, then bytes with GPT-2's regex: SmolLM2's), `gpt-2` (bytes
    with GPT-2's regex alone); anything else is refused rather than written with a split llama.cpp
    would not reproduce."""
    steps = _pre_tokenizer_steps(spec)
    kinds = [s.get("type") for s in steps]
    byte_regex = kinds[-1:] == ["ByteLevel"] and steps[-1].get("use_regex", True)
    if kinds == ["Split", "ByteLevel"] and steps[0]["pattern"].get("Regex") == QWEN2_SPLIT and not byte_regex:
        return "qwen2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_regex:
        return "smollm"
    if kinds == ["ByteLevel"] and byte_regex:
        return "gpt-2"
    raise GGUFExportError(f"pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))[:200]} is not one llama.cpp "
                          "reproduces (Qwen2's split, SmolLM2's digits + GPT-2 regex, GPT-2's regex)")


def checkpoint_tensors(model_dir: Path):
    """(name, lazy loader) for every tensor in the checkpoint's safetensors files."""
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    for name in files:
        if not (model_dir / name).is_file():
            raise GGUFExportError(f"missing weights file {model_dir / name}")
    for name in files:
        # Kept open (no `with`) so the loaders work after the listing is done; memory-mapped, cheap.
        handle = safe_open(str(model_dir / name), framework="pt")
        for key in handle.keys():
            yield key, (lambda h=handle, k=key: h.get_tensor(k))


def gguf_name(hf_name: str, name_map) -> str:
    stem, dot, suffix = hf_name.rpartition(".")
    mapped = name_map.get_name(stem)
    if mapped is None:
        raise GGUFExportError(f"tensor {hf_name} has no llama.cpp name")
    return f"{mapped}.{suffix}"


# ---------------------------------------------------------------------------------------------
# Writing


def _quantized(array: np.ndarray, quant: str):
    """(data, raw type) of one tensor. Norm weights and other vectors stay f32 as in llama.cpp's
    own converter; a matrix whose rows do not split into q8_0's 32-value blocks is stored f16."""
    if array.ndim < 2 or quant == "f32":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = _tensor_type(quant)
    try:
        return gguf.quants.quantize(array.astype(np.float32), qtype), qtype
    except gguf.quants.QuantError:
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16


def write_gguf(model_dir: str | Path, out: str | Path, quant: str = "f16", progress: bool = True) -> Path:
    """Write the checkpoint as one GGUF in a type gguf's numpy code quantizes (f32, f16, bf16,
    q8_0). The file appears only once complete."""
    if quant not in NUMPY_QUANTS:
        raise GGUFExportError(f"write_gguf quantizes {', '.join(NUMPY_QUANTS)}; use export_gguf for {quant}")
    model_dir, out = Path(model_dir), Path(out)
    config = read_config(model_dir)
    rope = rope_settings(config)
    vocab = tokenizer_metadata(model_dir, config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", False))

    with atomic_path(out) as partial:
        arch = architecture_of(config)
        writer = gguf.GGUFWriter(str(partial), arch.name, use_temp_file=True)
        try:
            _write_all(writer, model_dir, config, arch, quant, vocab, rope, tied, progress)
        finally:
            writer.close()
    return out


def _write_all(writer, model_dir: Path, config: dict, arch: Architecture, quant: str, vocab: dict, rope: dict,
               tied: bool, progress: bool) -> None:
    layers, hidden, heads = config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    writer.add_name(model_dir.resolve().name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope["theta"])
    if rope["type"] != "default":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN if rope["type"] == "yarn" else gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if rope["original_context"]:
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_context"]))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    writer.add_eos_token_id(vocab["eos"])
    writer.add_pad_token_id(vocab["pad"])
    writer.add_bos_token_id(vocab["bos"])
    if vocab["unk"] is not None:
        writer.add_unk_token_id(vocab["unk"])
    writer.add_add_bos_token(vocab["add_bos"])
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])

    name_map = gguf.get_tensor_name_map(arch.model_arch, layers)
    kv_heads = config.get("num_key_value_heads", heads)
    tensors = list(checkpoint_tensors(model_dir))
    for hf_name, load in tqdm(tensors, desc=f"gguf {quant}", unit="tensor", disable=not progress):
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        array = load().float().numpy()
        if arch.interleave_rope and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            array = interleave_rope_rows(array, heads if "q_proj" in hf_name else kv_heads)
        data, qtype = _quantized(array, quant)
        writer.add_tensor(gguf_name(hf_name, name_map), data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)


def llama_quantize(source: Path, out: Path, quant: str, threads: int | None = None) -> None:
    """llama.cpp's own quantizer (the code behind `llama-quantize`) through llama-cpp-python."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _file_type(quant)
    params.nthread = threads or os.cpu_count() or 1
    # llama.cpp logs a line per tensor; what each tensor became is read back from the file and
    # reported by export_gguf instead.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    with atomic_path(out) as partial:
        try:
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        finally:
            log.setLevel(level)
        if status != 0 or not partial.is_file():
            raise GGUFExportError(f"llama.cpp could not quantize {source} to {quant} (status {status})")


def tensor_types(path: str | Path) -> dict[str, str]:
    """GGUF tensor name -> the GGML type it is stored in, read back from the file."""
    reader = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


def _fallbacks(types: dict[str, str], quant: str, rows: dict[str, int]) -> tuple[list[dict], list[str]]:
    """Matrices llama.cpp did not store in the requested family, and why (row length)."""
    if quant not in LLAMA_QUANTS:
        wanted = _tensor_type(quant).name
        off = [{"tensor": n, "type": t, "row": rows.get(n)} for n, t in types.items()
               if rows.get(n, 0) > 1 and t != wanted]
        notes = [f"{len(off)} matrices stored as f16: rows not a multiple of 32"] if off else []
        return off, notes
    family = {"q4_k_m": ("Q4_K", "Q5_K", "Q6_K"), "q5_k_m": ("Q5_K", "Q6_K"), "q6_k": ("Q6_K",)}[quant]
    off = [{"tensor": n, "type": t, "row": rows.get(n)} for n, t in types.items()
           if rows.get(n, 0) > 1 and t not in family]
    notes = []
    if off:
        got = Counter(f["type"] for f in off)
        short = sorted({f["row"] for f in off if f["row"] % K_BLOCK})
        notes.append(
            f"{len(off)} of {sum(1 for n in types if rows.get(n, 0) > 1)} matrices are not K-quantized "
            f"({', '.join(f'{k} x {v}' for k, v in sorted(got.items()))}): K-quants need rows that are a "
            f"multiple of {K_BLOCK} values" + (f"; this model has rows of {short}" if short else "")
        )
    return off, notes


def export_gguf(model_dir: str | Path, out: str | Path, quant: str = "f16", progress: bool = True,
                threads: int | None = None) -> GGUFReport:
    """Checkpoint directory -> one GGUF in `quant`, with a report of what every tensor became."""
    if quant not in QUANTS:
        raise GGUFExportError(f"unknown quant {quant!r}; choose from {', '.join(QUANTS)}")
    model_dir, out = Path(model_dir), Path(out)
    if quant in NUMPY_QUANTS:
        write_gguf(model_dir, out, quant, progress)
    else:
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            # A small model is quantized from f32 so the K-quant error is llama.cpp's alone; a big
            # one from f16, as llama.cpp's own workflow does, to halve the intermediate file.
            source = Path(tmp) / "source.gguf"
            write_gguf(model_dir, source, "f32" if _small(model_dir) else "f16", progress)
            out.parent.mkdir(parents=True, exist_ok=True)
            llama_quantize(source, out, quant, threads)
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    rows = {t.name: int(t.shape[0]) if len(t.shape) > 1 else 1 for t in reader.tensors}  # gguf shape: ne0 = row length
    fallbacks, notes = _fallbacks(types, quant, rows)
    return GGUFReport(
        out=str(out), quant=quant, bytes=out.stat().st_size,
        parameters=int(sum(int(np.prod(t.shape)) for t in reader.tensors)),
        tensor_types=dict(Counter(types.values())), fallbacks=fallbacks, notes=notes,
    )


def _small(model_dir: Path, limit_bytes: int = 4 << 30) -> bool:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) < limit_bytes


DEFAULT_QUANT = "q8_0"  # the command line's, and the pipeline's [export] gguf


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m export.gguf", __doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, tokenizer.json, safetensors)")
    parser.add_argument("--out", required=True, help="the .gguf file to write")
    parser.add_argument("--quant", default=DEFAULT_QUANT, choices=QUANTS)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp quantizer threads (K-quants)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _export, (GGUFExportError, OSError))


def _export(args) -> int:
    report = export_gguf(args.model, args.out, args.quant, progress=not args.quiet, threads=args.threads)
    return print_report(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
