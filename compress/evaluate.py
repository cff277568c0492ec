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
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from compress.calibration import ForcedTotals, answer_logprobs, answer_targets, encode_rows, split_rows
from compress.model_flags import add_load_flags, load_options
from compress.plots import plot_metrics
from core.artifacts import EVAL_REPORT_FILE, METRICS_FILE, model_fingerprint, write_atomic, write_json
from core.cli import add_config_flags, config_from_args, fail
from data.poi import SYDNEY
from models.generate import generate_batch
from models.load import LoadOptions, ModelLoadError, decoder_layers, load_model
from models.recall import Scorer, about_places, aggregate

REPORT_FILE = EVAL_REPORT_FILE
# How the evaluation loads its models unless told otherwise: float32, so that metrics compare
# across machines and runs.
EVAL_LOAD = LoadOptions(dtype="float32")

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


@dataclass(frozen=True)
class EvalConfig:
    """How students are measured: the CLI's flags and the pipeline's [evaluate] section (the models,
    the corpus, the POI file and the output folder are not settings: Evaluation.open and evaluate
    take them)."""

    splits: tuple[str, ...] = field(default=("test", "known"), metadata={
        "help": "test, val, known (train cells not used for calibration), train; comma-separated or repeated",
        "aliases": ("--split",)})
    limit: int | None = field(default=256, metadata={
        "help": "samples per split, a seeded sample when the split is larger (0: all)"})
    max_new_tokens: int = field(default=192, metadata={"help": "longest generated answer"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy; otherwise sampled with the same seeds"})
    batch_size: int = field(default=16, metadata={"help": "rows per forward pass and per generation batch"})
    latency_queries: int = field(default=8, metadata={"help": "queries answered one at a time for the latency"})
    max_length: int = field(default=512, metadata={"help": "tokens per teacher-forced sequence"})
    seed: int = field(default=0, metadata={"help": "which rows of a larger split; the sampling seeds"})

    def __post_init__(self) -> None:
        if self.limit == 0:
            object.__setattr__(self, "limit", None)


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


def place_answers(model, tokenizer, rows: list[dict], scorer: Scorer, config: EvalConfig,
                  progress: bool = False) -> list[dict]:
    """Each row answered (the same decoding for every model) and scored, one record per prompt:
    its place and style, the answer, the facts it recalls of those the reference states, whether
    it names its place and which other places it names."""
    texts = generate_answers(model, tokenizer, rows, config, progress)
    records = []
    for row, text in zip(rows, texts):
        score = scorer.score(text, row)
        records.append({"plus_code": row["plus_code"], "style": row["style"], "interests": row["interests"],
                        "answer": text, "facts": score["facts"], "names_place": score["names_place"],
                        "wrong_places": score["wrong_places"]})
    return records


# The place-answer metrics: how each is summed over a place's prompts (numerator, denominator).
PLACE_METRICS = {
    "fact_recall": lambda r: (r["facts"][0], r["facts"][1]),
    "names_place": lambda r: (float(r["names_place"]), 1.0),
    "wrong_place": lambda r: (float(bool(r["wrong_places"])), 1.0),
}


def place_totals(records: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """metric -> place -> (numerator, denominator) summed over the place's prompts: the input of
    compress.compare's intervals; a metric's value is the ratio of the sums."""
    out: dict[str, dict[str, tuple[float, float]]] = {m: {} for m in PLACE_METRICS}
    for record in records:
        for metric, parts in PLACE_METRICS.items():
            num, den = parts(record)
            n0, d0 = out[metric].get(record["plus_code"], (0.0, 0.0))
            out[metric][record["plus_code"]] = (n0 + num, d0 + den)
    return out


@dataclass
class Evaluation:
    """A loaded teacher and the per-split rows and sequences every model is measured on."""

    config: EvalConfig
    teacher_path: str
    data: str
    pois: str
    load: LoadOptions
    teacher: object = None
    tokenizer: object = None
    rows: dict[str, list[dict]] = field(default_factory=dict)
    sequences: dict[str, list] = field(default_factory=dict)
    scorer: Scorer | None = None

    @classmethod
    def open(cls, teacher_path: str, data: str | Path, config: EvalConfig = EvalConfig(), pois: str | Path = SYDNEY,
             load: LoadOptions = EVAL_LOAD, loaded: tuple | None = None) -> Evaluation:
        """Load the teacher (or take `loaded` = (model, tokenizer) already in memory) and encode
        every split of the corpus `data` once; `pois` is the POI file the corpus was built from.
        Every student is loaded with `load` too."""
        teacher, tokenizer = loaded or load_model(teacher_path, load)
        ev = cls(config, teacher_path, str(data), str(pois), load, teacher, tokenizer, scorer=Scorer(pois))
        for split in config.splits:
            ev.rows[split] = split_rows(data, split, config.limit, config.seed)
            if not ev.rows[split]:
                raise ValueError(f"split {split!r} of {data} is empty")
            ev.sequences[split] = encode_rows(ev.rows[split], tokenizer, config.max_length)
        return ev

    def key(self) -> dict:
        """What makes two evaluations of one model comparable (not the output folder or the device)."""
        key = {"data": self.data, **asdict(self.config), "pois": self.pois, "dtype": self.load.dtype}
        return json.loads(json.dumps(key))  # as metrics.json holds it: tuples become lists

    def measure(self, name: str, model, tokenizer, out_dir: Path, progress: bool = False) -> dict:
        """Every metric of one model; its answers go to out_dir/generations/."""
        if model.config.vocab_size != self.teacher.config.vocab_size:
            raise ValueError(f"{name}: vocabulary {model.config.vocab_size} differs from the teacher's "
                             f"{self.teacher.config.vocab_size}; KL needs one tokenizer")
        generations = Path(out_dir) / "generations"
        generations.mkdir(parents=True, exist_ok=True)
        result = {"layers": len(decoder_layers(model)), "parameters": sum(p.numel() for p in model.parameters()),
                  "splits": {}}
        for split in self.config.splits:
            rows = about_places(self.rows[split])  # KL and perplexity over every row, facts where there are places
            forced = forced_metrics(model, self.teacher, self.sequences[split], self.config.batch_size)
            texts = generate_answers(model, tokenizer, rows, self.config, progress)
            scores = [self.scorer.score(t, r) for t, r in zip(texts, rows)]
            result["splits"][split] = {**forced, **aggregate(scores)}
            lines = [json.dumps({"plus_code": r["plus_code"], "style": r["style"], "interests": r["interests"],
                                 "answer": t, **s}) for t, r, s in zip(texts, rows, scores)]
            write_atomic(generations / f"{name}.{split}.jsonl", "\n".join(lines) + "\n")
        result["latency"] = measure_latency(model, tokenizer, self.rows[self.config.splits[0]], self.config)
        return result


def _load_metrics(path: Path, key: dict) -> dict:
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("config") == key:
            return old
    return {"config": key, "models": {}}


def evaluate(evaluation: Evaluation, students: dict[str, str], out_dir: str | Path, progress: bool = True) -> dict:
    """Measure the evaluation's teacher and each student {name: path} into `out_dir`; resumes
    from its metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / METRICS_FILE
    metrics = _load_metrics(path, evaluation.key())
    metrics["teacher"] = evaluation.teacher_path
    todo = {"teacher": evaluation.teacher_path, **students}
    for name, model_path in tqdm(todo.items(), desc="evaluate", unit="model", disable=not progress):
        fingerprint = model_fingerprint(model_path)
        done = metrics["models"].get(name)
        if done and done.get("fingerprint") == fingerprint:
            continue
        if name == "teacher":
            model, tokenizer = evaluation.teacher, evaluation.tokenizer
        else:
            model, tokenizer = load_model(model_path, evaluation.load)
        result = evaluation.measure(name, model, tokenizer, out, progress)
        metrics["models"][name] = {"path": model_path, "fingerprint": fingerprint, **result}
        write_json(path, metrics)
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
    parser.add_argument("--pois", default=str(SYDNEY), help="POI file the corpus was built from")
    add_config_flags(parser, EvalConfig)
    add_load_flags(parser, dtype=EVAL_LOAD.dtype)
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
    args = build_parser().parse_args(argv)
    try:
        students = parse_students(args.student)
        evaluation = Evaluation.open(args.teacher, args.data, config_from_args(EvalConfig, args), args.pois,
                                     load_options(args))
        metrics = evaluate(evaluation, students, args.out)
    except (ValueError, FileNotFoundError, ModelLoadError) as exc:
        return fail(exc)
    report = write_report(metrics, args.out)
    print(report.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
