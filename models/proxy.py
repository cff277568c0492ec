"""Proxy teacher: a Qwen3-architecture model trained from scratch on our tour corpus.

Where no hub is reachable, this is the stand-in for Qwen3-32B: same decoder (GQA, QK-norm,
RoPE, SwiGLU, RMSNorm), same ChatML prompt, a byte-level BPE tokenizer with Qwen2's split regex.
Every compression step runs on it unchanged, and later on a real Qwen3 checkpoint.

    python -m models.proxy --preset demo --data out/corpus --out out/teacher-demo

Training is plain next-token prediction on the assistant turn (the prompt is context, not a
target), AdamW with warm-up and cosine decay, batches of similar length. The batch order depends
only on the seed and the step, and a checkpoint (weights, optimizer, losses) is written every few
hundred steps, so a killed run resumes where it stopped and ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from data.corpus import read_split
from core.artifacts import write_atomic
from data.poi import SYDNEY as DEFAULT_POIS
from data.prompt import IM_END, render_prompt
from models.tokenizer import corpus_texts, train_tokenizer

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


@dataclass
class TrainState:
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def qwen3_config(preset: ProxyPreset, tokenizer=None):
    """The preset's Qwen3Config; without a tokenizer (planning only) the vocabulary is the preset's."""
    from transformers import Qwen3Config

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


def encode_row(row: dict, tokenizer, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + answer, and where the answer starts. The two halves are tokenized
    apart and the prompt is rendered as generation renders it (the tokenizer's own template for a
    real Qwen3), so teacher forcing sees exactly what generation sees."""
    prompt = tokenizer(render_prompt(row["messages"], tokenizer), add_special_tokens=False)["input_ids"]
    answer = tokenizer(row["target"] + IM_END, add_special_tokens=False)["input_ids"]
    return (prompt + answer)[:max_length], len(prompt)


def _batches_for_epoch(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    # Shuffle, sort within windows of 32 batches by length (little padding), shuffle batches.
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_for_step(lengths: list[int], batch_size: int, seed: int, step: int) -> list[int]:
    """The rows of training step `step`: a pure function of (seed, step), for exact resumes."""
    per_epoch = len(_batches_for_epoch(lengths, batch_size, seed, 0))
    return _batches_for_epoch(lengths, batch_size, seed, step // per_epoch)[step % per_epoch]


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, answer_start) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        labels[row, answer_start:len(ids)] = torch.tensor(ids[answer_start:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def cosine_lr(step: int, lr: float, warmup: int, steps: int, floor: float = 0.1) -> float:
    """Linear warm-up to `lr`, then cosine decay to `floor * lr` at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def learning_rate(preset: ProxyPreset, step: int) -> float:
    return cosine_lr(step, preset.lr, preset.warmup, preset.steps)


@torch.no_grad()
def mean_loss(model, examples: list[tuple[list[int], int]], pad_id: int, batch_size: int, device) -> float:
    """Token-weighted cross-entropy over the answers of `examples`."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * n
        count += n
    model.train()
    return total / max(1, count)


def fact_recall(model, tokenizer, rows: list[dict], pois_path: Path, max_new_tokens: int, batch_size: int = 16) -> dict:
    """Greedy answers to `rows`, scored against the POI facts their references state: the share
    of those facts the model reproduces, and the share of answers naming their place."""
    from data.poi import load_pois
    from data.validate import facts_recalled, names_poi
    from models.generate import generate_batch

    pois = {p.id: p for p in load_pois(pois_path)}
    recalled = expected = named = 0
    examples = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        answers = generate_batch(model, tokenizer, [r["messages"] for r in chunk], max_new_tokens)
        for row, answer in zip(chunk, answers):
            row_pois = [pois[i] for i in row["poi_ids"] if i in pois]
            hit, total = facts_recalled(answer.text, row["target"], row_pois)
            recalled, expected = recalled + hit, expected + total
            named += bool(row_pois) and names_poi(answer.text, row_pois[0])
            if len(examples) < 3:
                examples.append({"prompt": row["messages"][-1]["content"], "answer": answer.text})
    return {
        "samples": len(rows),
        "fact_recall": recalled / max(1, expected),
        "facts_expected": expected,
        "names_place": named / max(1, len(rows)),
        "examples": examples,
    }


def _config_key(preset: ProxyPreset, seed: int, corpus_sha: str) -> str:
    blob = json.dumps({"preset": asdict(preset), "seed": seed, "corpus": corpus_sha}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def corpus_sha(corpus_dir: Path, splits: tuple[str, ...] = ("train", "val")) -> str:
    """One hash of the named split files of a corpus."""
    from core.artifacts import sha256_file

    return hashlib.sha256("".join(sha256_file(Path(corpus_dir) / f"{s}.jsonl") for s in splits).encode()).hexdigest()


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save through a temporary file: a kill mid-write leaves the previous checkpoint intact."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


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
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: ~8x faster, loss unaffected here
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_rows, val_rows = read_split(corpus_dir, "train"), read_split(corpus_dir, "val")

    tok_dir = out_dir / "tokenizer"
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    elif (tok_dir / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    else:
        tokenizer = train_tokenizer(corpus_texts(corpus_dir), preset.vocab_size)
        tokenizer.save_pretrained(str(tok_dir))

    key = _config_key(preset, seed, corpus_sha(corpus_dir))
    finished = out_dir / "training.json"
    if finished.is_file() and (out_dir / "config.json").is_file():
        report = json.loads(finished.read_text())
        if report.get("key") == key:
            return report  # this exact training already ran to the end: nothing to redo
    train = [encode_row(r, tokenizer, preset.max_length) for r in train_rows]
    val = [encode_row(r, tokenizer, preset.max_length) for r in val_rows][: preset.eval_samples]
    lengths = [len(ids) for ids, _ in train]

    model = Qwen3ForCausalLM(qwen3_config(preset, tokenizer)).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=preset.lr, betas=(0.9, 0.95), weight_decay=preset.weight_decay
    )
    state = TrainState()
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if saved["key"] != key:
            raise RuntimeError(
                f"{ckpt} belongs to a different preset, seed or corpus; delete it or pick another --out"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainState(**{k: saved["state"][k] for k in asdict(TrainState())})
        state.losses = [tuple(x) for x in state.losses]
        state.val_losses = [tuple(x) for x in state.val_losses]
    pad_id = tokenizer.pad_token_id
    model.train()

    deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
    bar = tqdm(total=preset.steps, initial=state.step, disable=not progress, desc=f"proxy {preset.name}", unit="step")
    smoothed = state.losses[-1][1] if state.losses else None
    started = time.monotonic() - state.seconds
    while state.step < preset.steps:
        rows = batch_for_step(lengths, preset.batch_size, seed, state.step)
        batch = {k: v.to(device) for k, v in collate([train[i] for i in rows], pad_id).items()}
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(preset, state.step)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state.step += 1
        value = loss.item()
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        if state.step % 10 == 0 or state.step == preset.steps:
            state.losses.append((state.step, round(smoothed, 4)))
        if state.step % preset.eval_every == 0:
            state.val_losses.append((state.step, round(mean_loss(model, val, pad_id, preset.batch_size, device), 4)))
        bar.set_postfix(loss=f"{smoothed:.3f}", val=f"{state.val_losses[-1][1]:.3f}" if state.val_losses else "-")
        bar.update(1)
        state.seconds = time.monotonic() - started
        out_of_time = deadline is not None and time.monotonic() > deadline
        if state.step % preset.checkpoint_every == 0 or (stop_after and state.step >= stop_after) or out_of_time:
            save_checkpoint(ckpt, {"key": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "state": asdict(state)})
        if stop_after and state.step >= stop_after and state.step < preset.steps:
            bar.close()
            return {"stopped_at": state.step}
        if out_of_time:
            break
    bar.close()

    report = {
        "key": key,
        "preset": asdict(preset),
        "seed": seed,
        "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
        + (f", {torch.cuda.get_device_name()}" if torch.device(device).type == "cuda" else ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": state.step,
        "train_seconds": round(state.seconds, 1),
        "train_loss": state.losses[-1][1] if state.losses else None,
        "train_loss_full": round(mean_loss(model, train[: 4 * preset.eval_samples], pad_id, preset.batch_size, device), 4),
        "val_loss": round(mean_loss(model, val, pad_id, preset.batch_size, device), 4),
        "loss_curve": state.losses,
        "val_curve": state.val_losses,
    }
    model.eval()
    # Recall on training places says whether the facts are in the weights; on unseen validation
    # places it should be near zero (the model cannot know them), which is the honest baseline.
    max_new = min(320, preset.max_length)
    batch = 64 if torch.device(device).type == "cuda" else 16
    report["recall_train"] = fact_recall(model, tokenizer, train_rows[: preset.recall_samples], Path(pois_path), max_new, batch)
    report["recall_val"] = fact_recall(model, tokenizer, val_rows[: preset.recall_samples], Path(pois_path), max_new, batch)

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    write_atomic(out_dir / "training.json", json.dumps(report, indent=1) + "\n")
    ckpt.unlink(missing_ok=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.proxy", description=__doc__.split("\n\n")[0])
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ("steps", "train_seconds", "train_loss_full", "val_loss", "parameters")}
    summary["fact_recall_train"] = round(report["recall_train"]["fact_recall"], 3)
    summary["fact_recall_val"] = round(report["recall_val"]["fact_recall"], 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
