"""Fine-tuning a pretrained base into a tour teacher: the places of the corpus learnt into its
weights, through the one training loop.

    python -m train.finetune --model BASE_DIR --data out/corpus --out out/tour-teacher [--method lora]

A pretrained instruct model (SmolLM2-135M-Instruct from models.pretrained, Qwen3 on a GPU box)
knows how to write but not our places: asked about 46V8+73 Sydney it invents. Training on the
answers of the corpus (cross-entropy on the assistant turn; `full` or `lora` adapters merged at the
end) teaches the facts; validation loss on held-out rows picks the best weights. bf16 autocast runs
where the device computes bf16 natively (`precision = "auto"`), fp32 elsewhere.

The report says how fast it trained (tokens/s, and the model FLOPs utilisation: 6 N tokens/s over
the bf16 (or fp32) matmul rate measured on this machine at the start) and what it learnt (fact
recall, names-place and repetition on known places, before and after).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.artifacts import TRAINING_FILE, corpus_sha, fingerprint, model_fingerprint, write_json
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from core.config import keyed_settings
from data.corpus import read_split
from data.poi import SYDNEY
from models.checkpoint import save_model_dir
from models.load import LoadOptions, ModelLoadError, load_model
from models.recall import Scorer, fact_recall
from train.adapters import base_of, with_lora
from train.batches import encode_row
from train.loop import PRECISIONS, LoopConfig, discard_checkpoint, finished_report, train
from train.proxy import ProxyTask, mean_loss

METHODS = ("full", "lora")
ANSWER_TOKENS_ON = ("every", "unknown")
BEFORE_FILE = "before.json"  # the base's scores while a run is unfinished


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = field(default="full", metadata={"help": "train every weight, or LoRA adapters merged at the end",
                                                  "choices": METHODS})
    epochs: float = field(default=3.0, metadata={"help": "passes over the training rows"})
    max_steps: int | None = field(default=None, metadata={"help": "cap on optimizer steps"})
    batch_size: int = 8
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate (LoRA wants about 10x more)"})
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_length: int = field(default=512, metadata={"help": "tokens per training row (prompt + answer)"})
    lora_rank: int = 16
    lora_alpha: int = 32
    precision: str = field(default="auto", metadata={"help": "fp32, bf16, or auto (bf16 where native)",
                                                     "choices": PRECISIONS})
    attention: str = field(default="auto", metadata={
        "help": "attention kernel while training: auto (eager on a CPU), eager or sdpa"})
    eval_every: int | None = field(default=None, metadata={"help": "validate every N steps (default: per epoch)"})
    # Unset by default: a corpus held out by cell validates on places the teacher never sees, whose
    # loss rises as it memorises its own, so stopping on it would stop the learning that matters.
    patience: int | None = field(default=None, metadata={
        "help": "validations without a lower loss before stopping (unset: train to the end)"})
    eval_samples: int = field(default=64, metadata={"help": "validation rows"})
    recall_samples: int = field(default=48, metadata={"help": "known-place rows answered for the recall check"})
    checkpoint_every: int | None = field(default=50, metadata={"help": "steps between checkpoints"})
    seed: int = 0
    max_minutes: float | None = field(default=None, metadata={"help": "stop after this long, then save"})
    first_weight: float = field(default=1.0, metadata={
        "keyed_when_set": True,
        "help": "weight of each answer's first token in the loss, where the guide decides between describing "
                "and refusing (1: every token alike)"})
    answer_tokens: int | None = field(default=None, metadata={
        "keyed_when_set": True,
        "help": "score only each answer's first N tokens, the rest cut off (1: a pass on the describe-or-refuse "
                "decision alone, at the cost of the prompts; unset: whole answers)"})
    # A first-token pass on every row leaves the known answers' later tokens untrained, and they drift:
    # trial 17's student named the place in 89.0% of known answers, another place's fact in 10.2%
    # (docs/results/app-nearmiss-15.md). `unknown` cuts only the refusals, whose words never vary.
    answer_tokens_on: str = field(default="every", metadata={
        "keyed_when_set": True, "choices": ANSWER_TOKENS_ON,
        "help": "rows answer_tokens cuts: every row, or only those about unknown cells (the known keep whole answers)"})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.method!r}; choose {', '.join(METHODS)}")
        if self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.first_weight <= 0:
            raise ValueError("first_weight must be positive")
        if self.answer_tokens is not None and self.answer_tokens < 1:
            raise ValueError("answer_tokens must be at least 1 (unset: whole answers)")
        if self.answer_tokens_on not in ANSWER_TOKENS_ON:
            raise ValueError(f"unknown answer_tokens_on {self.answer_tokens_on!r}; choose {', '.join(ANSWER_TOKENS_ON)}")


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of a square matmul in `dtype` on the CPU, best of `repeats`: the bound MFU is read against."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: first calls pick kernels
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _cut(config: FinetuneConfig, row: dict) -> int | None:
    """How many of the row's answer tokens are trained (None: all)."""
    return config.answer_tokens if config.answer_tokens_on == "every" or not row["poi_ids"] else None


class TourTask(ProxyTask):
    """Cross-entropy on the answers, early stopping on the held-out loss; LoRA's wrapper is looked through."""

    def validate(self, model) -> dict:
        return super().validate(base_of(model))


def loop_config(config: FinetuneConfig, steps: int, per_epoch: int, progress: bool) -> LoopConfig:
    shared = ("batch_size", "lr", "warmup", "min_lr_ratio", "weight_decay", "grad_clip", "seed", "precision",
              "attention", "patience", "checkpoint_every", "max_minutes")
    return LoopConfig(steps=steps, eval_every=config.eval_every or per_epoch, name=f"finetune {config.method}",
                      keyed_by="base model, corpus or fine-tuning config", progress=progress,
                      **{k: getattr(config, k) for k in shared})


def finetune(base: str, corpus: str | Path, out_dir: str | Path, config: FinetuneConfig = FinetuneConfig(),
             pois: str | Path = SYDNEY, load: LoadOptions = LoadOptions(dtype="float32"),
             progress: bool = True) -> dict:
    """Fine-tune `base` (a checkpoint folder or hub id) on the corpus into `out_dir`; returns the
    report (also in out_dir/training.json). A finished run with the same key is returned as is;
    an interrupted one resumes from its checkpoint."""
    corpus, out_dir = Path(corpus), Path(out_dir)
    key = fingerprint({"base": model_fingerprint(base), "corpus": corpus_sha(corpus), "config": keyed_settings(config)})
    done = finished_report(out_dir, TRAINING_FILE, key)
    if done is not None:
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(base, load)
    rows, val_rows = read_split(corpus, "train"), read_split(corpus, "val")
    examples = [encode_row(r, tokenizer, config.max_length, _cut(config, r)) for r in rows]
    val = [encode_row(r, tokenizer, config.max_length, _cut(config, r)) for r in val_rows[: config.eval_samples]]
    if not val:
        raise ValueError(f"{corpus} has no validation rows: the fine-tune picks its best weights by their loss")
    per_epoch = math.ceil(len(examples) / config.batch_size)
    steps = min(math.ceil(config.epochs * per_epoch), config.max_steps or math.inf)
    known, scorer = rows[:: max(1, len(rows) // config.recall_samples)][: config.recall_samples], Scorer(pois)
    before = _measured_before(out_dir, key, lambda: _measure(model, tokenizer, known, val, scorer, config))
    loop = loop_config(config, steps, per_epoch, progress)
    trained = with_lora(model, config.lora_rank, config.lora_alpha) if config.method == "lora" else model
    trained.train()
    task = TourTask(val, tokenizer.pad_token_id, config.batch_size)
    task.first_weight = config.first_weight
    result = train(trained, task, examples,
                   tokenizer.pad_token_id, loop, out_dir, key)
    if not result.finished:
        return {"stopped_at": result.state.step}
    model = (result.model.merge_and_unload() if config.method == "lora" else result.model).eval()
    report = {"key": key, "base": str(base), "config": asdict(config), **result.report(),
              "throughput": _throughput(model, examples, result, config.batch_size), "before": before,
              "after": _measure(model, tokenizer, known, val, scorer, config)}
    save_model_dir(model, tokenizer, out_dir)
    write_json(out_dir / TRAINING_FILE, report)
    discard_checkpoint(out_dir, loop)
    (out_dir / BEFORE_FILE).unlink(missing_ok=True)  # in the report now
    return report


def _measured_before(out_dir: Path, key: str, measure) -> dict:
    """The base's scores, measured once per run key: a resumed run does not answer the prompts again."""
    path = out_dir / BEFORE_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["before"]
    before = measure()
    write_json(path, {"key": key, "before": before})
    return before


def _measure(model, tokenizer, known: list[dict], val, scorer: Scorer, config: FinetuneConfig) -> dict:
    was_training = model.training
    model.eval()
    recall = fact_recall(model, tokenizer, known, scorer, max_new_tokens=256, batch_size=16)
    loss = mean_loss(model, val, tokenizer.pad_token_id, config.batch_size)
    model.train(was_training)
    return {"val_loss": round(loss, 4), **recall}


def _throughput(model, examples, result, batch_size: int) -> dict:
    """Tokens per second of the training steps (rows of mean length; padding not counted), and on
    a CPU 6 N tokens/s against the matmul rate measured in the precision the loop trained in."""
    mean_tokens = sum(len(ids) for ids, _ in examples) / len(examples)
    tokens_per_s = result.state.step * batch_size * mean_tokens / max(result.state.step_seconds, 1e-9)
    n = sum(p.numel() for p in model.parameters())
    out = {"tokens_per_s": round(tokens_per_s, 1), "parameters": n, "precision": result.precision,
           "mean_tokens_per_row": round(mean_tokens, 1)}
    if next(model.parameters()).device.type == "cpu":
        peak = matmul_peak(torch.bfloat16 if result.precision == "bf16" else torch.float32)
        out.update(matmul_peak_gflops=round(peak / 1e9, 1), mfu=round(6 * n * tokens_per_s / peak, 4))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m train.finetune", "Fine-tune a pretrained base on the tour corpus into a tour teacher.",
                        "python -m train.finetune --model runs/pretrained/smollm2-135m-instruct --data out/corpus "
                        "--out out/tour-teacher --epochs 3")
    parser.add_argument("--model", required=True, help="the base: a checkpoint folder or hub id")
    parser.add_argument("--data", required=True, help="corpus directory from python -m data.build")
    parser.add_argument("--out", required=True, help="where the tour teacher goes (a rerun resumes its checkpoint)")
    parser.add_argument("--pois", default=str(SYDNEY), help="the POI file the corpus was built from")
    add_config_flags(parser, FinetuneConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _finetune, (ValueError, OSError, RuntimeError, ModelLoadError))


def _finetune(args) -> int:
    report = finetune(args.model, args.data, args.out, config_from_args(FinetuneConfig, args), args.pois)
    summary = {k: report.get(k) for k in ("steps", "seconds", "stopped", "throughput")}
    for when in ("before", "after"):
        if when in report:
            summary[when] = {k: report[when][k] for k in ("val_loss", "fact_recall", "names_place", "repetition")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
