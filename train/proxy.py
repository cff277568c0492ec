"""Proxy teacher: a Qwen3-architecture model trained from scratch on our tour corpus.

Where no hub is reachable, this is the stand-in for Qwen3-32B: same decoder (GQA, QK-norm,
RoPE, SwiGLU, RMSNorm), same ChatML prompt, a byte-level BPE tokenizer with Qwen2's split regex.
Every compression step runs on it unchanged, and later on a real Qwen3 checkpoint.

    python -m train.proxy --preset demo --data out/corpus --out out/teacher-demo

Training is plain next-token prediction on the assistant turn (the prompt is context, not a
target) through train.loop: AdamW with warm-up and cosine decay, batches of similar length in an
order that depends only on the seed and the step, and a checkpoint every few hundred steps, so a
killed run resumes where it stopped and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from core.artifacts import TRAINING_FILE, corpus_sha, fingerprint, write_json
from core.cli import fail
from data.corpus import read_split
from data.poi import SYDNEY as DEFAULT_POIS
from models.checkpoint import save_model_dir
from models.load import input_device
from models.recall import Scorer, fact_recall
from models.tokenizer import corpus_texts, train_tokenizer
from train.batches import Example, collate, encode_row
from train.loop import LoopConfig, Task, discard_checkpoint, finished_report, train
from train.losses import answer_ce

CHECKPOINT_FILE = "checkpoint.pt"  # one torch.save: the proxy trains in one process


@dataclass(frozen=True)
class ProxyPreset:
    """Architecture and training schedule of one proxy size."""

    name: str
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int  # always explicit: Qwen3Config would otherwise default it to 128
    intermediate: int
    vocab_size: int
    max_length: int
    batch_size: int
    steps: int
    lr: float
    warmup: int = 50
    weight_decay: float = 0.1
    eval_every: int = 200
    checkpoint_every: int = 200
    eval_samples: int = 64  # validation rows scored at each evaluation
    recall_samples: int = 48  # rows per split generated for the fact-recall check
    rope_theta: float = 10000.0


PRESETS: dict[str, ProxyPreset] = {
    # Tests and CI: seconds on a laptop CPU; learns the format, not the places.
    "micro": ProxyPreset(
        "micro", num_layers=4, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=192,
        vocab_size=1024, max_length=256, batch_size=16, steps=60, lr=3e-3, warmup=10,
        eval_every=30, checkpoint_every=30, eval_samples=16, recall_samples=4,
    ),
    # The CPU teacher of docs/results: 12 layers, trained in under 45 minutes on 2 cores until
    # it reproduces the facts of its training places.
    "demo": ProxyPreset(
        "demo", num_layers=12, hidden=128, heads=4, kv_heads=2, head_dim=32, intermediate=384,
        vocab_size=4096, max_length=448, batch_size=24, steps=1800, lr=3e-3, warmup=60,
        eval_every=100, checkpoint_every=100,
    ),
    # For a machine with a GPU: deeper and wider, the shape pruning is studied on at scale.
    "gpu": ProxyPreset(
        "gpu", num_layers=24, hidden=512, heads=8, kv_heads=4, head_dim=64, intermediate=1536,
        vocab_size=8192, max_length=512, batch_size=64, steps=2500, lr=1e-3, warmup=200,
        eval_every=500, checkpoint_every=500, recall_samples=128,
    ),
}


def qwen3_config(preset: ProxyPreset, tokenizer=None):
    """The preset's Qwen3Config; without a tokenizer (planning only) the vocabulary is the preset's."""
    return Qwen3Config(
        vocab_size=len(tokenizer) if tokenizer is not None else preset.vocab_size,
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        head_dim=preset.head_dim,
        max_position_embeddings=max(2048, preset.max_length),
        rope_theta=preset.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id if tokenizer is not None else None,
        pad_token_id=tokenizer.pad_token_id if tokenizer is not None else None,
    )


@torch.no_grad()
def mean_loss(model, examples: list[Example], pad_id: int, batch_size: int) -> float:
    """Token-weighted cross-entropy over the answers of `examples`."""
    device = input_device(model)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total += float(answer_ce(logits, batch["labels"])) * n
        count += n
    return total / max(1, count)


class ProxyTask(Task):
    """Next-token prediction on the answers (the default loss), judged by the loss on held-out rows."""

    def __init__(self, val: list[Example], pad_id: int, batch_size: int):
        self.val, self.pad_id, self.batch_size = val, pad_id, batch_size

    def validate(self, model) -> dict:
        return {"val_loss": round(mean_loss(model, self.val, self.pad_id, self.batch_size), 4)}

    def score(self, metrics: dict) -> float:
        return metrics["val_loss"]  # early stopping (the fine-tuned teacher uses it; the proxy never stops early)


def loop_config(preset: ProxyPreset, seed: int, device: str, max_minutes: float | None = None,
                stop_after: int | None = None, progress: bool = True) -> LoopConfig:
    return LoopConfig(
        steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr, warmup=preset.warmup,
        weight_decay=preset.weight_decay, seed=seed, device=device, eval_every=preset.eval_every,
        checkpoint_every=preset.checkpoint_every, checkpoint=CHECKPOINT_FILE, log_every=10,
        max_minutes=max_minutes, stop_after=stop_after, name=f"proxy {preset.name}",
        keyed_by="preset, seed or corpus", progress=progress,
    )


def _tokenizer(corpus_dir: Path, out_dir: Path, preset: ProxyPreset, tokenizer_dir: str | Path | None):
    """The given tokenizer, the one an earlier run trained into out_dir, or a new one trained there."""
    tok_dir = out_dir / "tokenizer"
    if tokenizer_dir is not None:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if (tok_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(tok_dir))
    tokenizer = train_tokenizer(corpus_texts(corpus_dir), preset.vocab_size)
    tokenizer.save_pretrained(str(tok_dir))
    return tokenizer


def train_proxy(
    corpus_dir: str | Path,
    out_dir: str | Path,
    preset: ProxyPreset,
    seed: int = 0,
    device: str = "cpu",
    tokenizer_dir: str | Path | None = None,
    pois_path: str | Path = DEFAULT_POIS,
    max_minutes: float | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) a proxy teacher into `out_dir`; returns the training report.

    `stop_after` ends the run after that many steps with a checkpoint and no final model, as a
    kill would; `max_minutes` ends training early but still saves and evaluates the model. A
    directory holding a finished training of the same preset, seed and corpus is returned as is."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: ~8x faster, loss unaffected here
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # the initial weights
    train_rows, val_rows = read_split(corpus_dir, "train"), read_split(corpus_dir, "val")
    tokenizer = _tokenizer(corpus_dir, out_dir, preset, tokenizer_dir)
    key = fingerprint({"preset": asdict(preset), "seed": seed, "corpus": corpus_sha(corpus_dir)})
    done = finished_report(out_dir, TRAINING_FILE, key)
    if done is not None:
        return done  # this exact training already ran to the end: nothing to redo
    examples = [encode_row(r, tokenizer, preset.max_length) for r in train_rows]
    val = [encode_row(r, tokenizer, preset.max_length) for r in val_rows][: preset.eval_samples]

    model = Qwen3ForCausalLM(qwen3_config(preset, tokenizer)).to(device)
    config = loop_config(preset, seed, device, max_minutes, stop_after, progress)
    result = train(model, ProxyTask(val, tokenizer.pad_token_id, preset.batch_size), examples,
                   tokenizer.pad_token_id, config, out_dir, key)
    if not result.finished:
        return {"stopped_at": result.state.step}
    model, s, pad = result.model.eval(), result.state, tokenizer.pad_token_id
    report = {
        "key": key, "preset": asdict(preset), "seed": seed, "device": device, "machine": _machine(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": s.step, "train_seconds": round(s.seconds, 1), "stopped": s.stopped, "precision": result.precision,
        "train_loss": s.losses[-1][1] if s.losses else None,
        "train_loss_full": round(mean_loss(model, examples[: 4 * preset.eval_samples], pad, preset.batch_size), 4),
        "val_loss": round(mean_loss(model, val, pad, preset.batch_size), 4),
        "loss_curve": s.losses,
        "val_curve": [(v["step"], v["val_loss"]) for v in s.validations],
    }
    # Recall on training places says whether the facts are in the weights; on unseen validation
    # places it should be near zero (the model cannot know them), which is the honest baseline.
    scorer, max_new = Scorer(pois_path), min(320, preset.max_length)
    batch = 64 if torch.device(device).type == "cuda" else 16
    report["recall_train"] = fact_recall(model, tokenizer, train_rows[: preset.recall_samples], scorer, max_new, batch)
    report["recall_val"] = fact_recall(model, tokenizer, val_rows[: preset.recall_samples], scorer, max_new, batch)

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model_dir(model, tokenizer, out_dir)
    write_json(out_dir / TRAINING_FILE, report)
    discard_checkpoint(out_dir, config)
    return report


def _machine(device: str) -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
            + (f", {torch.cuda.get_device_name()}" if torch.device(device).type == "cuda" else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="micro")
    parser.add_argument("--data", required=True, help="corpus directory from `python -m data.build`")
    parser.add_argument("--out", required=True, help="model directory to write (resumes from its checkpoint)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--tokenizer", help="reuse this tokenizer directory instead of training one")
    parser.add_argument("--pois", default=str(DEFAULT_POIS), help="POI file for the fact-recall check")
    parser.add_argument("--max-minutes", type=float, help="stop training after this long, then save and evaluate")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    if args.steps:
        preset = replace(preset, steps=args.steps)
    if args.batch_size:
        preset = replace(preset, batch_size=args.batch_size)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = train_proxy(
            args.data, args.out, preset, seed=args.seed, device=args.device,
            tokenizer_dir=args.tokenizer, pois_path=args.pois, max_minutes=args.max_minutes,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        return fail(exc)
    summary = {k: report[k] for k in ("steps", "train_seconds", "train_loss_full", "val_loss", "parameters")}
    summary["fact_recall_train"] = round(report["recall_train"]["fact_recall"], 3)
    summary["fact_recall_val"] = round(report["recall_val"]["fact_recall"], 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
