"""Record what the teacher's layers do on tour-guide text.

    python -m compress.capture --model out/teacher-demo --data out/corpus --output-dir out/capture --analyze

Forward hooks on every captured decoder layer take the layer input, the residual stream after
attention (the input of post_attention_layernorm), the layer output, and the inputs of o_proj
(per-head outputs) and down_proj (FFN neuron activations). Each token is weighted by the entropy
of the teacher's next-token distribution there: where the teacher hesitates, the layers are doing
work the student must keep.

Corpus samples are answered by the teacher first (greedy), so a sample is the prompt plus the
teacher's own answer, as distillation will see it. `--format stats` keeps only fixed-size sums
(compress.stats); `pt` / `h5` keep the tensors (compress.shards). Either way, a killed capture
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from compress.shards import FORMATS, STORE_DTYPES, ShardWriter
from compress.stats import Dims, StreamStats, sample_keys
from core.artifacts import write_atomic

STATS_FILE = "stats.safetensors"
CAPTURE_FILE = "capture.json"
ALL_FORMATS = ("stats", *FORMATS)


class CaptureError(RuntimeError):
    pass


@dataclass
class CaptureConfig:
    model: str
    output_dir: str
    data: str | None = None  # corpus directory
    split: str = "train"
    texts: list[str] = field(default_factory=list)
    text_file: str | None = None
    samples_dir: str | None = None
    layers: list[int] | None = None  # None: every decoder layer
    max_length: int = 512
    max_new_tokens: int = 256
    dtype: str = "auto"
    device: str = "cpu"
    quantization: str | None = None  # "8bit" / "4bit" (bitsandbytes, CUDA)
    format: str = "stats"
    shard_dtype: str = "float16"
    limit: int | None = None
    batch_size: int = 8  # prompts answered together by the teacher
    checkpoint_every: int = 16  # stats mode: samples between saved sums
    cka_tokens: int = 256


@dataclass
class Sample:
    id: str
    messages: list[dict[str, str]] | None = None  # corpus: the teacher answers these
    text: str | None = None  # plain text: captured as is


def collect_samples(config: CaptureConfig) -> list[Sample]:
    """Every requested sample with a stable id (so a resumed capture recognises its work)."""
    samples: list[Sample] = []
    if config.data:
        from data.corpus import read_split

        try:
            rows = read_split(config.data, config.split)
        except FileNotFoundError as exc:
            raise CaptureError(str(exc)) from exc
        samples += [Sample(f"{config.split}:{n}", messages=row["messages"]) for n, row in enumerate(rows)]
    samples += [Sample(f"text:{n}", text=t) for n, t in enumerate(config.texts)]
    if config.text_file:
        path = Path(config.text_file)
        if not path.is_file():
            raise CaptureError(f"--text-file {path} not found")
        lines = path.read_text(encoding="utf-8").splitlines()
        samples += [Sample(f"{path.name}:{n}", text=t) for n, t in enumerate(lines) if t.strip()]
    if config.samples_dir:
        directory = Path(config.samples_dir)
        if not directory.is_dir():
            raise CaptureError(f"--samples-dir {directory} is not a directory")
        samples += [Sample(f"file:{p.name}", text=p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.txt"))]
    if not samples:
        raise CaptureError("no samples: give --data, --text, --text-file or --samples-dir")
    return samples[: config.limit] if config.limit else samples


def token_entropy(logits: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Entropy (nats) of the next-token distribution at each position; [T, V] -> [T].
    Chunked so a 151k vocabulary does not need a second full float32 copy of the logits."""
    out = []
    for start in range(0, logits.shape[0], chunk):
        # H = log Z - E[z - max]: one exp pass over the vocabulary instead of two.
        z = logits[start:start + chunk].float()
        z = z - z.max(dim=-1, keepdim=True).values
        e = z.exp()
        total = e.sum(-1)
        out.append(total.log() - (e * z).sum(-1) / total)
    return torch.cat(out)


class ActivationRecorder:
    """Hooks on the chosen decoder layers; `take()` returns the tensors of the last forward pass
    run inside `recording()`, under the names of `compress.stats.sample_keys`, batch dimension
    removed."""

    def __init__(self, model, layers: list[int]):
        from models.load import decoder_layers, layer_parts

        self.layers = layers
        self.wanted = set(sample_keys(layers))
        self.buffer: dict[str, torch.Tensor] = {}
        self.enabled = False
        self.handles = []
        blocks = decoder_layers(model)
        for layer in layers:
            parts = layer_parts(model, layer)
            if f"input.{layer}" in self.wanted:  # otherwise the previous layer's output is the input
                self.handles.append(
                    blocks[layer].register_forward_pre_hook(self._pre(f"input.{layer}"), with_kwargs=True)
                )
            self.handles += [
                blocks[layer].register_forward_hook(self._post(f"output.{layer}")),
                parts.post_attn_norm.register_forward_pre_hook(self._pre(f"post_attn.{layer}"), with_kwargs=True),
                parts.o_proj.register_forward_pre_hook(self._pre(f"o_proj_in.{layer}"), with_kwargs=True),
                parts.down_proj.register_forward_pre_hook(self._pre(f"down_proj_in.{layer}"), with_kwargs=True),
            ]

    def _keep(self, name: str, tensor: torch.Tensor) -> None:
        if self.enabled and name in self.wanted:
            self.buffer[name] = tensor.detach()[0]

    @contextmanager
    def recording(self):
        """Hooks keep tensors only inside this block: the teacher's own generation steps
        (which run through the same hooked layers) are not recorded."""
        self.enabled = True
        try:
            yield self
        finally:
            self.enabled = False

    def _pre(self, name: str):
        def hook(module, args, kwargs):
            self._keep(name, args[0] if args else kwargs["hidden_states"])

        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            self._keep(name, output[0] if isinstance(output, tuple) else output)

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        missing = self.wanted - self.buffer.keys()
        if missing:
            raise CaptureError(f"hooks did not fire for {sorted(missing)[:3]}")
        out, self.buffer = self.buffer, {}
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _check_resume(out_dir: Path, meta: dict) -> None:
    path = out_dir / CAPTURE_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    keys = ("model", "data", "split", "layers", "max_length", "format", "shard_dtype", "max_new_tokens")
    changed = [k for k in keys if old.get(k) != meta.get(k)]
    if changed:
        raise CaptureError(
            f"{out_dir} holds a capture made with different {', '.join(changed)}; use another --output-dir"
        )


def _stats_progress(out_dir: Path, layers, dims, cka_tokens, device) -> tuple[StreamStats, set[str]]:
    path = out_dir / STATS_FILE
    if not path.is_file():
        return StreamStats(layers, dims, cka_tokens, device), set()
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        done = set(json.loads(f.metadata()["done"]))
    stats = StreamStats.from_state_dict(load_file(str(path)), device)
    stats.cka_tokens = cka_tokens
    return stats, done


def _save_stats(out_dir: Path, stats: StreamStats, done: set[str]) -> None:
    import os

    path = out_dir / STATS_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(stats.state_dict(), str(tmp), metadata={"done": json.dumps(sorted(done))})
    os.replace(tmp, path)


def teacher_sequences(samples: list[Sample], model, tokenizer, config: CaptureConfig) -> Iterator[tuple[Sample, list[int], list[int]]]:
    """(sample, input tokens, output tokens), corpus prompts answered by the teacher in batches."""
    from models.generate import generate_batch

    for start in range(0, len(samples), config.batch_size):
        chunk = samples[start:start + config.batch_size]
        chats = [s for s in chunk if s.messages is not None]
        answers = iter(generate_batch(model, tokenizer, [s.messages for s in chats], config.max_new_tokens)) if chats else iter(())
        for sample in chunk:
            if sample.messages is not None:
                answer = next(answers)
                yield sample, answer.prompt_ids, answer.output_ids
            else:
                yield sample, tokenizer(sample.text, add_special_tokens=False)["input_ids"], []


def run_capture(config: CaptureConfig, progress: bool = True) -> dict:
    """Capture into `config.output_dir`; returns a summary. Resumes an interrupted capture."""
    from models.load import LoadOptions, ModelLoadError, decoder_layers, input_device, load_model

    if config.format not in ALL_FORMATS:
        raise CaptureError(f"unknown --format {config.format!r}; choose {', '.join(ALL_FORMATS)}")
    if config.shard_dtype not in STORE_DTYPES:
        raise CaptureError(f"unknown shard dtype {config.shard_dtype!r}")
    samples = collect_samples(config)
    try:
        model, tokenizer = load_model(
            config.model, LoadOptions(dtype=config.dtype, device=config.device, quantization=config.quantization)
        )
    except ModelLoadError as exc:
        raise CaptureError(str(exc)) from exc
    n_layers = len(decoder_layers(model))
    layers = sorted(set(config.layers)) if config.layers else list(range(n_layers))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise CaptureError(f"--layer {bad[0]} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    dims = Dims.of(model.config)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {**asdict(config), "layers": layers, "num_layers": n_layers, "dims": asdict(dims),
            "model_type": model.config.model_type}
    _check_resume(out_dir, meta)
    write_atomic(out_dir / CAPTURE_FILE, json.dumps(meta, indent=1) + "\n")

    device = input_device(model)  # inputs go here, and the sums stay here (the first GPU under device_map)
    if config.format == "stats":
        stats, done = _stats_progress(out_dir, layers, dims, config.cka_tokens, device)
        writer = None
    else:
        writer = ShardWriter(out_dir, config.format, config.shard_dtype)
        done = set(writer.done)
    todo = [s for s in samples if s.id not in done]

    recorder = ActivationRecorder(model, layers)
    tokens = truncated = 0
    forward_seconds = 0.0
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), disable=not progress, desc="capture", unit="sample")
    try:
        for sample, inp, out in teacher_sequences(todo, model, tokenizer, config):
            ids = inp + out
            if len(ids) > config.max_length:
                warnings.warn(f"sample {sample.id}: {len(ids)} tokens truncated to --max-length {config.max_length}")
                ids, truncated = ids[: config.max_length], truncated + 1
            if not ids:
                warnings.warn(f"sample {sample.id} is empty; skipped")
                continue
            started = time.perf_counter()
            with torch.no_grad(), recorder.recording():
                logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]
            entropy = token_entropy(logits)
            acts = recorder.take()
            forward_seconds += time.perf_counter() - started
            tokens += len(ids)
            if writer is None:
                stats.update(acts, entropy)
                done.add(sample.id)
                if len(done) % config.checkpoint_every == 0:
                    _save_stats(out_dir, stats, done)
            else:
                n_in = min(len(inp), len(ids))
                row = {
                    "id": sample.id,
                    "text": tokenizer.decode(ids, skip_special_tokens=False),
                    "input_tokens": ids[:n_in],
                    "output_tokens": ids[n_in:],
                    "span": [0, n_in, len(ids)],
                    "layers": layers,
                }
                writer.write(row, {**acts, "entropy": entropy, "input_ids": torch.tensor(ids)})
            bar.update(1)
    finally:
        recorder.remove()
        bar.close()
    if writer is None:
        _save_stats(out_dir, stats, done)
    else:
        writer.finish()
    return {
        "output_dir": str(out_dir),
        "format": config.format,
        "samples": len(samples),
        "captured_now": len(todo),
        "tokens_now": tokens,
        "truncated": truncated,
        "layers": len(layers),
        "forward_seconds": round(forward_seconds, 3),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compress.capture",
        description="Record a teacher's layer activations on tour-guide text (stats or raw shards).",
        epilog="Example: python -m compress.capture --model out/teacher-demo --data out/corpus "
        "--output-dir out/capture --limit 256 --analyze",
    )
    parser.add_argument("--model", required=True, help="model directory or Hugging Face hub id")
    parser.add_argument("--data", help="corpus directory (python -m data.build); the teacher answers its prompts")
    parser.add_argument("--split", default="train", help="corpus split to read (default train)")
    parser.add_argument("--text", action="append", default=[], help="a text sample (repeatable)")
    parser.add_argument("--text-file", help="a file with one text sample per line")
    parser.add_argument("--samples-dir", help="a directory of .txt samples")
    parser.add_argument("--output-dir", required=True, help="where stats / shards / metadata go")
    parser.add_argument("--layer", type=int, action="append", help="capture only this decoder layer (repeatable)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per sample; longer ones are truncated")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="length of the teacher's answers")
    parser.add_argument("--dtype", default="auto", help="model dtype: auto, float32, bfloat16, float16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda, cuda:N, or auto (accelerate, several GPUs)")
    parser.add_argument("--quantization", choices=("8bit", "4bit"), help="load the teacher quantized (bitsandbytes, CUDA)")
    parser.add_argument("--format", choices=ALL_FORMATS, default="stats",
                        help="stats: fixed-size sums; pt: a safetensors file per sample; h5: one HDF5 file")
    parser.add_argument("--shard-dtype", choices=sorted(STORE_DTYPES), default="float16", help="dtype of raw shards")
    parser.add_argument("--limit", type=int, help="number of samples")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts the teacher answers at once")
    parser.add_argument("--analyze", action="store_true", help="run compress.analyze afterwards and print its table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = CaptureConfig(
        model=args.model, output_dir=args.output_dir, data=args.data, split=args.split, texts=args.text,
        text_file=args.text_file, samples_dir=args.samples_dir, layers=args.layer, max_length=args.max_length,
        max_new_tokens=args.max_new_tokens, dtype=args.dtype, device=args.device, quantization=args.quantization,
        format=args.format,
        shard_dtype=args.shard_dtype, limit=args.limit, batch_size=args.batch_size,
    )
    try:
        summary = run_capture(config)
    except (CaptureError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    if args.analyze:
        from compress.analyze import analyze, format_table

        result = analyze(args.output_dir)
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
