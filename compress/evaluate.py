"""Measure compressed students against their teacher on tour-guide data the pruning never saw.

    python -m compress.evaluate --teacher T --student S [--student S2 ...] --data C --out DIR

For every model (the teacher too, as the reference row) and every split:
- teacher-forced on the reference descriptions: perplexity, KL(teacher || model) in nats per
  answer token, and top-1 agreement with the teacher's next-token choice;
- generated, with the same decoding for every model (greedy unless --temperature, then the same
  seeds): fact recall (of the POI facts the reference states, the share the answer states too),
  names-place rate, wrong-place rate (answers naming a POI of another cell), length compliance
  (the word band of the requested style), full style compliance (length, sentences, engagement),
  repetition rate (share of repeated word 3-grams), words per answer;
- latency: the first queries answered one at a time: median seconds per query and tokens/s.

Splits: `test` and `val` (held-out cells, never trained on), `known` (train cells, i.e. places the
teacher was taught, that no calibration sample came from; see compress.calibration).

Writes metrics.json after every model (a killed evaluation resumes with the next one),
generations/<model>.<split>.jsonl, report.md and metrics_<split>.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from compress.calibration import ForcedTotals, answer_logprobs, answer_targets, encode_rows, split_rows
from core.artifacts import write_atomic
from data.poi import SYDNEY

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"

# Metric key, column title, format, and whether higher is better (read by comparisons, bench.depth).
COLUMNS = (
    ("perplexity", "ppl", "{:.2f}", False),
    ("kl", "KL", "{:.3f}", False),
    ("top1_agreement", "top-1", "{:.3f}", True),
    ("fact_recall", "facts", "{:.3f}", True),
    ("names_place", "names", "{:.3f}", True),
    ("wrong_place", "wrong", "{:.3f}", False),
    ("length_ok", "length", "{:.3f}", True),
    ("style_ok", "style", "{:.3f}", True),
    ("repetition", "rep", "{:.3f}", False),
)
HIGHER_IS_BETTER = {key: higher for key, _, _, higher in COLUMNS}


@dataclass
class EvalConfig:
    data: str
    out: str
    splits: tuple[str, ...] = ("test", "known")
    limit: int | None = 256  # samples per split (a seeded sample when the split is larger)
    max_new_tokens: int = 192
    temperature: float = 0.0
    batch_size: int = 16
    latency_queries: int = 8
    max_length: int = 512
    seed: int = 0
    pois: str = str(SYDNEY)
    device: str = "cpu"
    dtype: str = "float32"

    def key(self) -> dict:
        # What makes two evaluations of one model comparable (the output folder does not).
        key = {k: v for k, v in asdict(self).items() if k not in ("out", "device")}
        return json.loads(json.dumps(key))  # as metrics.json holds it: tuples become lists


_WORDS = re.compile(r"[a-z0-9']+")


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the word n-grams of a text that repeat an earlier one: 0 for varied prose,
    approaching 1 for a degenerate loop."""
    words = _WORDS.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


class Scorer:
    """Per-answer checks against the corpus row that asked for it."""

    def __init__(self, pois_path: str | Path):
        from data.poi import load_pois
        from data.validate import PlaceNames

        self.pois = {p.id: p for p in load_pois(Path(pois_path))}
        self.names = PlaceNames(self.pois.values())

    def score(self, text: str, row: dict) -> dict:
        from data.generate.base import GenerationRequest
        from data.validate import facts_recalled, foreign_places, names_poi
        from data.vocab import STYLES, count_words, style_problems

        pois = tuple(self.pois[i] for i in row["poi_ids"] if i in self.pois)
        if not pois:
            raise ValueError(f"row at {row['plus_code']} names POIs {row['poi_ids']} that the POI file does not hold")
        request = GenerationRequest(row["plus_code"], row["short_code"], row["locality"], pois,
                                    tuple(row["interests"]), row["style"])
        hit, expected = facts_recalled(text, row["target"], pois)
        spec = STYLES[row["style"]]
        words = count_words(text)
        return {
            "facts": [hit, expected],
            "names_place": names_poi(text, pois[0]),
            "wrong_places": sorted(set(foreign_places(text, request, self.names))),
            "length_ok": spec.min_words <= words <= spec.max_words,
            "style_ok": not style_problems(text, row["style"]),
            "repetition": repetition_rate(text),
            "words": words,
        }


def aggregate(scores: list[dict]) -> dict:
    n = max(1, len(scores))
    expected = sum(s["facts"][1] for s in scores)
    return {
        "fact_recall": sum(s["facts"][0] for s in scores) / max(1, expected),
        "facts_expected": expected,
        "names_place": sum(s["names_place"] for s in scores) / n,
        "wrong_place": sum(bool(s["wrong_places"]) for s in scores) / n,
        "length_ok": sum(s["length_ok"] for s in scores) / n,
        "style_ok": sum(s["style_ok"] for s in scores) / n,
        "repetition": sum(s["repetition"] for s in scores) / n,
        "words": sum(s["words"] for s in scores) / n,
        "samples": len(scores),
    }


def forced_metrics(model, teacher, sequences, batch_size: int) -> dict:
    """Perplexity of the references, KL to the teacher and top-1 agreement, teacher-forced.
    The teacher's log-probabilities are recomputed batch by batch for each student rather than
    stored: for a 151k vocabulary they would take gigabytes, and one teacher forward per batch is
    cheap next to the generation that follows."""
    totals = ForcedTotals()
    if teacher is model:  # the teacher against itself: KL 0 and full agreement, by definition
        pairs = ((batch, batch) for batch in answer_logprobs(model, sequences, batch_size))
    else:
        pairs = zip(answer_logprobs(model, sequences, batch_size), answer_logprobs(teacher, sequences, batch_size))
    for (indices, students), (_, teachers) in pairs:
        for i, student, reference in zip(indices, students, teachers):
            totals.add(student, reference, answer_targets(sequences[i], student.device))
    return totals.means()


def generate_answers(model, tokenizer, rows: list[dict], config: EvalConfig, progress: bool = False) -> list[str]:
    from models.generate import generate_batch

    texts = []
    batches = range(0, len(rows), config.batch_size)
    for b, start in enumerate(tqdm(batches, desc="generate", unit="batch", leave=False, disable=not progress)):
        chunk = rows[start:start + config.batch_size]
        answers = generate_batch(model, tokenizer, [r["messages"] for r in chunk], config.max_new_tokens,
                                 config.temperature, seed=config.seed + b)
        texts += [a.text for a in answers]
    return texts


def measure_latency(model, tokenizer, rows: list[dict], config: EvalConfig) -> dict:
    """One query at a time, as a visitor asks: median wall seconds per answer and tokens/s."""
    from models.generate import generate_batch

    if not rows or config.latency_queries <= 0:
        return {}
    generate_batch(model, tokenizer, [rows[0]["messages"]], 8)  # warm-up: first-call allocations
    seconds, rates = [], []
    for row in rows[: config.latency_queries]:
        started = time.perf_counter()
        answer = generate_batch(model, tokenizer, [row["messages"]], config.max_new_tokens, config.temperature, config.seed)[0]
        elapsed = time.perf_counter() - started
        seconds.append(elapsed)
        rates.append(len(answer.output_ids) / elapsed)
    return {"latency_s": statistics.median(seconds), "tokens_per_s": statistics.median(rates),
            "latency_queries": len(seconds)}


def _fingerprint(path: str) -> str:
    """Identifies a checkpoint's contents cheaply: config plus weight files' sizes and mtimes."""
    folder = Path(path)
    parts = [path]
    if folder.is_dir():
        for f in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
            stat = f.stat()
            parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass
class Evaluation:
    """A loaded teacher and the per-split rows and sequences every model is measured on."""

    config: EvalConfig
    teacher_path: str
    teacher: object = None
    tokenizer: object = None
    rows: dict[str, list[dict]] = field(default_factory=dict)
    sequences: dict[str, list] = field(default_factory=dict)
    scorer: Scorer | None = None

    @classmethod
    def open(cls, teacher_path: str, config: EvalConfig, loaded: tuple | None = None) -> "Evaluation":
        """Load the teacher (or take `loaded` = (model, tokenizer) already in memory) and encode
        every split once."""
        from models.load import LoadOptions, load_model

        teacher, tokenizer = loaded or load_model(teacher_path, LoadOptions(dtype=config.dtype, device=config.device))
        ev = cls(config, teacher_path, teacher, tokenizer, scorer=Scorer(config.pois))
        for split in config.splits:
            ev.rows[split] = split_rows(config.data, split, config.limit, config.seed)
            if not ev.rows[split]:
                raise ValueError(f"split {split!r} of {config.data} is empty")
            ev.sequences[split] = encode_rows(ev.rows[split], tokenizer, config.max_length)
        return ev

    def measure(self, name: str, model, tokenizer, progress: bool = False) -> dict:
        from models.load import decoder_layers

        if model.config.vocab_size != self.teacher.config.vocab_size:
            raise ValueError(f"{name}: vocabulary {model.config.vocab_size} differs from the teacher's "
                             f"{self.teacher.config.vocab_size}; KL needs one tokenizer")
        out_dir = Path(self.config.out) / "generations"
        out_dir.mkdir(parents=True, exist_ok=True)
        result = {"layers": len(decoder_layers(model)), "parameters": sum(p.numel() for p in model.parameters()),
                  "splits": {}}
        for split in self.config.splits:
            rows = self.rows[split]
            forced = forced_metrics(model, self.teacher, self.sequences[split], self.config.batch_size)
            texts = generate_answers(model, tokenizer, rows, self.config, progress)
            scores = [self.scorer.score(t, r) for t, r in zip(texts, rows)]
            result["splits"][split] = {**forced, **aggregate(scores)}
            lines = [json.dumps({"plus_code": r["plus_code"], "style": r["style"], "interests": r["interests"],
                                 "answer": t, **s}) for t, r, s in zip(texts, rows, scores)]
            write_atomic(out_dir / f"{name}.{split}.jsonl", "\n".join(lines) + "\n")
        result["latency"] = measure_latency(model, tokenizer, self.rows[self.config.splits[0]], self.config)
        return result


def _load_metrics(path: Path, config: EvalConfig) -> dict:
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("config") == config.key():
            return old
    return {"config": config.key(), "models": {}}


def evaluate(teacher: str, students: dict[str, str], config: EvalConfig, progress: bool = True,
             evaluation: Evaluation | None = None) -> dict:
    """Measure the teacher and each student {name: path}; resumes from metrics.json."""
    from models.load import LoadOptions, load_model

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / METRICS_FILE
    metrics = _load_metrics(path, config)
    metrics["teacher"] = teacher
    ev = evaluation or Evaluation.open(teacher, config)
    todo = {"teacher": teacher, **students}
    for name, model_path in tqdm(todo.items(), desc="evaluate", unit="model", disable=not progress):
        fingerprint = _fingerprint(model_path)
        done = metrics["models"].get(name)
        if done and done.get("fingerprint") == fingerprint:
            continue
        if name == "teacher":
            model, tokenizer = ev.teacher, ev.tokenizer
        else:
            model, tokenizer = load_model(model_path, LoadOptions(dtype=config.dtype, device=config.device))
        result = ev.measure(name, model, tokenizer, progress)
        metrics["models"][name] = {"path": model_path, "fingerprint": fingerprint, **result}
        write_atomic(path, json.dumps(metrics, indent=1) + "\n")
        del model
    # Only the models asked for this time, in the order asked (older entries stay on disk only).
    metrics["models"] = {name: metrics["models"][name] for name in todo}
    return metrics


def format_report(metrics: dict, title: str = "Evaluation") -> str:
    config = metrics["config"]
    decoding = "greedy" if not config["temperature"] else f"temperature {config['temperature']}, seed {config['seed']}"
    lines = [f"# {title}", "", f"Teacher: `{metrics['teacher']}`. Data: `{config['data']}`, "
             f"up to {config['limit']} samples per split (seed {config['seed']}); {decoding} decoding, "
             f"at most {config['max_new_tokens']} new tokens.", ""]
    for split in config["splits"]:
        lines += [f"## Split `{split}`", "", *metric_table(metrics, split), ""]
    lines += [METRIC_LEGEND, ""]
    for split in config["splits"]:
        lines.append(f"![{split}](metrics_{split}.png)")
    return "\n".join(lines) + "\n"


def metric_table(metrics: dict, split: str) -> list[str]:
    """Markdown rows: every model of `metrics` on one split, every column."""
    lines = ["| model | layers | params | " + " | ".join(c[1] for c in COLUMNS) + " | s/query | tok/s |",
             "|---|---:|---:|" + "---:|" * (len(COLUMNS) + 2)]
    for name, m in metrics["models"].items():
        s = m["splits"][split]
        cells = [fmt.format(s[key]) for key, _, fmt, _ in COLUMNS]
        lat = m.get("latency") or {}
        lines.append(f"| {name} | {m['layers']} | {m['parameters'] / 1e6:.2f}M | " + " | ".join(cells)
                     + f" | {lat.get('latency_s', float('nan')):.2f} | {lat.get('tokens_per_s', float('nan')):.0f} |")
    return lines


METRIC_LEGEND = ("ppl: perplexity of the reference answers. KL: KL(teacher || model), nats per answer token. "
                 "top-1: share of answer positions where the model's most likely token is the teacher's. "
                 "facts: of the POI facts the reference states, the share the generated answer states. "
                 "names: answers naming their place. wrong: answers naming a POI of another cell. "
                 "length / style: answers inside the style's word band / passing every style check. "
                 "rep: share of repeated word 3-grams. s/query and tok/s: one query at a time, median.")


def write_report(metrics: dict, out_dir: str | Path, title: str = "Evaluation") -> Path:
    from compress.plots import plot_metrics

    out = Path(out_dir)
    for split in metrics["config"]["splits"]:
        plot_metrics(metrics, split, [(key, title) for key, title, _, _ in COLUMNS], out / f"metrics_{split}.png")
    write_atomic(out / REPORT_FILE, format_report(metrics, title))
    return out / REPORT_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compress.evaluate",
        description="Measure students against their teacher on held-out tour-guide data "
        "(teacher-forced perplexity / KL / agreement, generation quality, latency).",
        epilog="Example: python -m compress.evaluate --teacher out/teacher-demo --student out/depth-guided-8 "
        "--data out/corpus --out runs/eval",
    )
    parser.add_argument("--teacher", required=True, help="the unpruned model (directory or hub id)")
    parser.add_argument("--student", action="append", default=[], help="a student directory (repeatable); "
                        "NAME=DIR names its row")
    parser.add_argument("--data", required=True, help="corpus directory (python -m data.build)")
    parser.add_argument("--out", required=True, help="where metrics.json, report.md and plots go")
    parser.add_argument("--split", action="append", help="test, val, known (train cells not used for calibration), "
                        "train; repeatable (default: test and known)")
    parser.add_argument("--limit", type=int, default=EvalConfig.limit, help="samples per split (0 = all)")
    parser.add_argument("--max-new-tokens", type=int, default=EvalConfig.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=EvalConfig.batch_size)
    parser.add_argument("--latency-queries", type=int, default=EvalConfig.latency_queries)
    parser.add_argument("--pois", default=str(SYDNEY), help="POI file the corpus was built from")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def parse_students(specs: list[str]) -> dict[str, str]:
    students: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name or spec, spec
        if name in students or name == "teacher":
            raise ValueError(f"two models named {name!r}; name them with NAME=DIR")
        students[name] = path
    return students


def main(argv: list[str] | None = None) -> int:
    from models.load import ModelLoadError

    args = build_parser().parse_args(argv)
    config = EvalConfig(args.data, args.out, tuple(args.split or ("test", "known")), args.limit or None,
                        args.max_new_tokens, args.temperature, args.batch_size, args.latency_queries,
                        seed=args.seed, pois=args.pois, device=args.device, dtype=args.dtype)
    try:
        metrics = evaluate(args.teacher, parse_students(args.student), config)
    except (ValueError, FileNotFoundError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = write_report(metrics, args.out)
    print(report.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
