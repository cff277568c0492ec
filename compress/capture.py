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
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from compress.analyze import analyze, format_table
from compress.model_flags import add_model_flags, load_options
from compress.shards import FORMATS, STORE_DTYPES, ShardWriter
from compress.stats import Dims, StreamStats, sample_keys
from core.artifacts import CAPTURE_FILE, STATS_FILE, atomic_path, write_json
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from data.corpus import read_split
from models.generate import generate_batch
from models.load import LoadOptions, ModelLoadError, decoder_layers, input_device, layer_parts, load_model

ALL_FORMATS = ("stats", *FORMATS)


class CaptureError(RuntimeError):
    pass


@dataclass(frozen=True)
class CaptureConfig:
    """How a capture is made: the CLI's flags and the pipeline's [capture] section. The model, the
    samples (`Sources`) and the output folder are not settings: run_capture takes them."""

    split: str = field(default="train", metadata={"help": "corpus split whose prompts the teacher answers"})
    layers: tuple[int, ...] = field(default=(), metadata={
        "help": "capture only these decoder layers (repeatable; unset: every layer)", "aliases": ("--layer",)})
    max_length: int = field(default=512, metadata={"help": "tokens per sample; longer ones are truncated"})
    max_new_tokens: int = field(default=256, metadata={"help": "length of the teacher's answers"})
    format: str = field(default="stats", metadata={
        "help": "stats: fixed-size sums; pt: a safetensors file per sample; h5: one HDF5 file", "choices": ALL_FORMATS})
    shard_dtype: str = field(default="float16",
                             metadata={"help": "dtype of raw shards", "choices": sorted(STORE_DTYPES)})
    limit: int | None = field(default=None, metadata={"help": "number of samples (unset or 0: all)"})
    batch_size: int = field(default=8, metadata={"help": "prompts the teacher answers at once"})
    checkpoint_every: int = field(default=16, metadata={"help": "stats format: samples between saved sums"})
    cka_tokens: int = field(default=256, metadata={"help": "tokens per sample kept for the CKA matrices"})

    def __post_init__(self) -> None:
        if self.format not in ALL_FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose {', '.join(ALL_FORMATS)}")
        if self.shard_dtype not in STORE_DTYPES:
            raise ValueError(f"unknown shard dtype {self.shard_dtype!r}; choose {', '.join(STORE_DTYPES)}")


@dataclass(frozen=True)
class Sources:
    """What is captured: a corpus whose prompts the teacher answers, and plain texts taken as they are."""

    data: str | None = field(default=None, metadata={
        "help": "corpus directory (python -m data.build); the teacher answers its prompts"})
    texts: list[str] = field(default_factory=list,
                             metadata={"help": "a text sample (repeatable)", "aliases": ("--text",)})
    text_file: str | None = field(default=None, metadata={"help": "a file with one text sample per line"})
    samples_dir: str | None = field(default=None, metadata={"help": "a directory of .txt samples"})


@dataclass
class Sample:
    id: str
    messages: list[dict[str, str]] | None = None  # corpus: the teacher answers these
    text: str | None = None  # plain text: captured as is


def collect_samples(sources: Sources, split: str = "train", limit: int | None = None) -> list[Sample]:
    """Every requested sample with a stable id (so a resumed capture recognises its work)."""
    samples: list[Sample] = []
    if sources.data:
        try:
            rows = read_split(sources.data, split)
        except FileNotFoundError as exc:
            raise CaptureError(str(exc)) from exc
        samples += [Sample(f"{split}:{n}", messages=row["messages"]) for n, row in enumerate(rows)]
    samples += [Sample(f"text:{n}", text=t) for n, t in enumerate(sources.texts)]
    if sources.text_file:
        path = Path(sources.text_file)
        if not path.is_file():
            raise CaptureError(f"--text-file {path} not found")
        lines = path.read_text(encoding="utf-8").splitlines()
        samples += [Sample(f"{path.name}:{n}", text=t) for n, t in enumerate(lines) if t.strip()]
    if sources.samples_dir:
        directory = Path(sources.samples_dir)
        if not directory.is_dir():
            raise CaptureError(f"--samples-dir {directory} is not a directory")
        samples += [Sample(f"file:{p.name}", text=p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.txt"))]
    if not samples:
        raise CaptureError("no samples: give --data, --text, --text-file or --samples-dir")
    return samples[:limit] if limit else samples


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
    with safe_open(str(path), "pt") as f:
        done = set(json.loads(f.metadata()["done"]))
    stats = StreamStats.from_state_dict(load_file(str(path)), device)
    stats.cka_tokens = cka_tokens
    return stats, done


def _save_stats(out_dir: Path, stats: StreamStats, done: set[str]) -> None:
    with atomic_path(out_dir / STATS_FILE) as tmp:
        save_file(stats.state_dict(), str(tmp), metadata={"done": json.dumps(sorted(done))})


def teacher_sequences(samples: list[Sample], model, tokenizer,
                      config: CaptureConfig) -> Iterator[tuple[Sample, list[int], list[int]]]:
    """(sample, input tokens, output tokens), corpus prompts answered by the teacher in batches."""
    for start in range(0, len(samples), config.batch_size):
        chunk = samples[start:start + config.batch_size]
        chats = [s for s in chunk if s.messages is not None]
        answers = iter(generate_batch(model, tokenizer, [s.messages for s in chats], config.max_new_tokens)
                       if chats else ())
        for sample in chunk:
            if sample.messages is not None:
                answer = next(answers)
                yield sample, answer.prompt_ids, answer.output_ids
            else:
                yield sample, tokenizer(sample.text, add_special_tokens=False)["input_ids"], []


def run_capture(model: str, output_dir: str | Path, sources: Sources, config: CaptureConfig = CaptureConfig(),
                load: LoadOptions = LoadOptions(), progress: bool = True) -> dict:
    """Capture `model` on `sources` into `output_dir`; returns a summary. Resumes an interrupted capture."""
    samples = collect_samples(sources, config.split, config.limit)
    try:
        teacher, tokenizer = load_model(model, load)
    except ModelLoadError as exc:
        raise CaptureError(str(exc)) from exc
    n_layers = len(decoder_layers(teacher))
    layers = sorted(set(config.layers)) if config.layers else list(range(n_layers))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise CaptureError(f"--layer {bad[0]} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    dims = Dims.of(teacher.config)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"model": model, "output_dir": str(output_dir), **asdict(sources), **asdict(config),
            "dtype": load.dtype, "device": load.device, "quantization": load.quantization,
            "layers": layers, "num_layers": n_layers, "dims": asdict(dims), "model_type": teacher.config.model_type}
    _check_resume(out_dir, meta)
    write_json(out_dir / CAPTURE_FILE, meta)

    device = input_device(teacher)  # inputs go here, and the sums stay here (the first GPU under device_map)
    if config.format == "stats":
        stats, done = _stats_progress(out_dir, layers, dims, config.cka_tokens, device)
        writer = None
    else:
        stats, writer = None, ShardWriter(out_dir, config.format, config.shard_dtype)
        done = set(writer.done)
    todo = [s for s in samples if s.id not in done]
    recorder = ActivationRecorder(teacher, layers)
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), disable=not progress, desc="capture",
               unit="sample")
    try:
        totals = _capture(todo, teacher, tokenizer, recorder, config, device, bar,
                          store=_stats_store(out_dir, stats, done, config) if writer is None
                          else _shard_store(writer, tokenizer, layers))
    finally:
        recorder.remove()
        bar.close()
    if writer is None:
        _save_stats(out_dir, stats, done)
    else:
        writer.finish()
    return {"output_dir": str(out_dir), "format": config.format, "samples": len(samples), "captured_now": len(todo),
            **totals, "layers": len(layers)}


def _stats_store(out_dir: Path, stats: StreamStats, done: set[str], config: CaptureConfig):
    def store(sample: Sample, ids: list[int], n_in: int, acts: dict, entropy: torch.Tensor) -> None:
        stats.update(acts, entropy)
        done.add(sample.id)
        if len(done) % config.checkpoint_every == 0:
            _save_stats(out_dir, stats, done)

    return store


def _shard_store(writer: ShardWriter, tokenizer, layers: list[int]):
    def store(sample: Sample, ids: list[int], n_in: int, acts: dict, entropy: torch.Tensor) -> None:
        row = {"id": sample.id, "text": tokenizer.decode(ids, skip_special_tokens=False),
               "input_tokens": ids[:n_in], "output_tokens": ids[n_in:], "span": [0, n_in, len(ids)], "layers": layers}
        writer.write(row, {**acts, "entropy": entropy, "input_ids": torch.tensor(ids)})

    return store


def _capture(todo: list[Sample], model, tokenizer, recorder: ActivationRecorder, config: CaptureConfig, device,
             bar, store) -> dict:
    """One recorded forward pass per sample (prompt + the teacher's answer), each handed to `store`."""
    tokens = truncated = 0
    forward_seconds = 0.0
    for sample, inp, out in teacher_sequences(todo, model, tokenizer, config):
        ids = inp + out
        if len(ids) > config.max_length:
            warnings.warn(f"sample {sample.id}: {len(ids)} tokens truncated to --max-length {config.max_length}", stacklevel=2)
            ids, truncated = ids[: config.max_length], truncated + 1
        if not ids:
            warnings.warn(f"sample {sample.id} is empty; skipped", stacklevel=2)
            continue
        started = time.perf_counter()
        with torch.no_grad(), recorder.recording():
            logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]
        entropy = token_entropy(logits)
        acts = recorder.take()
        forward_seconds += time.perf_counter() - started
        tokens += len(ids)
        store(sample, ids, min(len(inp), len(ids)), acts, entropy)
        bar.update(1)
    return {"tokens_now": tokens, "truncated": truncated, "forward_seconds": round(forward_seconds, 3)}


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m compress.capture",
                        "Record a teacher's layer activations on tour-guide text (stats or raw shards).",
                        "python -m compress.capture --model out/teacher-demo --data out/corpus "
                        "--output-dir out/capture --limit 256 --analyze")
    add_model_flags(parser, quantization=True)
    parser.add_argument("--output-dir", required=True, help="where stats / shards / metadata go")
    add_config_flags(parser, Sources)
    add_config_flags(parser, CaptureConfig)
    parser.add_argument("--analyze", action="store_true", help="run compress.analyze afterwards and print its table")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _command, (CaptureError, OSError, ValueError))


def _command(args) -> int:
    summary = run_capture(args.model, args.output_dir, config_from_args(Sources, args),
                          config_from_args(CaptureConfig, args), load_options(args))
    print(json.dumps(summary))
    if args.analyze:
        print(format_table(analyze(args.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
