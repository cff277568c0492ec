"""runs/<run_id>/report.md: what a pipeline run did, what it made, and how good each model is.

    python -m compress.pipeline.report runs/demo --out docs/results/pipeline.md   # render it again, elsewhere
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from transformers import AutoConfig

from compress.evaluate import METRIC_LEGEND, metric_table
from compress.pipeline.config import PipelineError, load_config
from compress.pipeline.manifest import Run
from compress.pipeline.stages import STAGES, evaluated_models, final_student, teacher_path, trimmed_student
from compress.plots import plot_heal_curves, plot_qa
from compress.transport.qa import read_log
from core.artifacts import HEAL_FILE, MANIFEST_FILE, METRICS_FILE, RUN_REPORT_FILE, write_atomic
from core.cli import fail
from models.shapes import parameter_count

SIZE_FIELDS = (("layers", "num_hidden_layers"), ("hidden", "hidden_size"), ("heads", "num_attention_heads"),
               ("kv heads", "num_key_value_heads"), ("FFN", "intermediate_size"))


def model_row(name: str, folder: Path) -> str | None:
    """One Markdown row of a model directory's shape, parameter count and weight-file size."""
    if not (folder / "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(str(folder))
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    cells = [str(getattr(config, key)) for _, key in SIZE_FIELDS]
    return f"| {name} | " + " | ".join(cells) + f" | {parameter_count(config) / 1e6:.2f}M | {size / 2**20:.1f} MiB |"


def _heal_reports(run: Run) -> dict[str, dict]:
    reports = {}
    for name in ("student", "depth-only"):
        path = run.stage_dir("heal") / name / HEAL_FILE
        if path.is_file():
            report = json.loads(path.read_text())
            if "schedule" in report:  # iterative: one curve per step
                for step in sorted(path.parent.glob("step*/" + HEAL_FILE)):
                    reports[f"{name} {step.parent.name}"] = json.loads(step.read_text())
            else:
                reports[name] = report
    return reports


def _short(summary) -> str:
    if not summary:
        return ""
    text = json.dumps(summary, separators=(", ", ": "))
    return (text[:160] + " ...") if len(text) > 160 else text


def _stage_lines(run: Run) -> list[str]:
    m = run.manifest
    lines = [f"# Pipeline run `{m['run_id']}`", "",
             f"Config `{m.get('config_file')}`; git commit `{(m.get('git_commit') or 'unknown')[:12]}`; "
             + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v) + ".", "",
             "## Stages", "", "| stage | status | seconds | result |", "|---|---|---:|---|"]
    total = 0.0
    for stage in STAGES:
        rec = m["stages"].get(stage.name)
        if rec is None:
            lines.append(f"| {stage.name} | not run | | |")
            continue
        total += rec.get("seconds") or 0.0
        lines.append(f"| {stage.name} | {rec['status']} | {rec.get('seconds', '')} | "
                     f"{rec.get('error') or _short(rec.get('summary'))} |")
    return lines + ["", f"Time spent in stages this run's records cover: {total / 60:.1f} min. A skipped stage keeps "
                    "the time of the invocation that ran it."]


def _model_lines(run: Run) -> list[str]:
    lines = ["", "## Models", "", "| model | " + " | ".join(k for k, _ in SIZE_FIELDS) + " | params | weights |",
             "|---|" + "---:|" * (len(SIZE_FIELDS) + 2)]
    models = {"teacher": teacher_path(run), **evaluated_models(run)}
    if run.config.vocab.trim:
        models["depth+width, healed, vocabulary trimmed"] = str(trimmed_student(run))
    if run.config.prior.calibrate:
        models["... and its refusal prior calibrated"] = str(final_student(run))
    return lines + [row for name, folder in models.items() if (row := model_row(name, Path(folder)))]


def _measured(metrics: dict, key: str, spec: str) -> str:
    """A validation number, or a dash where it was not measured (no teacher: no KL, no top-1)."""
    return format(metrics[key], spec) if key in metrics else "—"


def _heal_lines(run: Run, figure) -> list[str]:
    heal = _heal_reports(run)
    if not heal:
        return []
    lines = ["", "## Healing", "", "Validation: teacher-forced on the held-out rows of the config's `val_split`.", "",
             "| healed | steps | stopped | KL before | KL after | top-1 before | top-1 after | ppl before "
             "| ppl after |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in heal.items():
        b, a = r["before"], r["after"]
        cells = [_measured(m, key, spec) for key, spec in (("kl", ".4f"), ("top1_agreement", ".3f"),
                                                            ("perplexity", ".2f")) for m in (b, a)]
        lines.append(f"| {name} | {r['steps']} | {r['stopped'] or 'ran all steps'} | " + " | ".join(cells) + " |")
    return lines + ["", f"![healing]({figure(plot_heal_curves(heal, run.dir / 'heal_curves.png'))})"]


def _evaluation_lines(run: Run, figure) -> list[str]:
    metrics_file = run.stage_dir("evaluate") / METRICS_FILE
    if not metrics_file.is_file() or run.record("evaluate").get("status") != "done":
        return []
    metrics = json.loads(metrics_file.read_text())
    lines = ["", "## Evaluation", ""]
    for split in metrics["config"]["splits"]:
        lines += [f"### Split `{split}`", "", *metric_table(metrics, split), "",
                  f"![{split}]({figure(run.stage_dir('evaluate') / f'metrics_{split}.png')})", ""]
    return lines + [METRIC_LEGEND]


def _qa_lines(run: Run, figure) -> list[str]:
    qa = read_log(run.dir)
    if not qa:
        return []
    lines = ["", "## QA metrics", "", "From `python -m compress.transport.qa` (runs/<id>/logs/metrics.jsonl), "
             "teacher-forced on held-out answers: KL(reference || candidate) and surprisal in nats per token.", "",
             "| candidate | when | split | tokens | logit KL | surprisal (reference) | mean hidden cosine |",
             "|---|---|---|---:|---:|---:|---:|"]
    for row in qa:
        cos = row.get("hidden_state_cosine")
        lines.append(f"| {row['label']} | {row['time'][:16]} | {row['config']['split']} | {row['tokens']} | "
                     f"{row.get('logit_kl', float('nan')):.4f} | {row.get('surprisal', float('nan')):.3f} "
                     f"({row.get('surprisal_reference', float('nan')):.3f}) | "
                     + (f"{sum(cos) / len(cos):.3f}" if cos else "–") + " |")
    return lines + ["", f"![QA]({figure(plot_qa(qa, run.dir / 'qa_metrics.png'))})"]


def _export_lines(run: Run) -> list[str]:
    exported = run.record("export")
    if exported.get("status") != "done":
        return []
    lines = ["", "## Exports", "", "The healed student for offline runtimes; *answer* is one greedy answer to the "
             "first test prompt through that runtime, compared with torch's.", "",
             "| export | file | MiB | answer |", "|---|---|---:|---|"]
    for name, e in exported["summary"].items():
        answer = e.get("answer") or {}
        said = ("same as torch" if answer.get("same_as_torch") else "differs from torch") if answer.get("ran") \
            else (f"not run: {answer['why']}" if answer else "not checked")
        lines.append(f"| {name} | `{e['file']}` | {e['bytes'] / 2**20:.2f} | {said} |")
        lines += [f"| | | | {note} |" for note in e.get("notes", [])]
    return lines


def format_run_report(run: Run, images: Path | None = None, prefix: str = "") -> str:
    """The report's Markdown. Figures go into the run directory, or into `images` as
    `{prefix}name.png` (for a copy of the report kept elsewhere, e.g. docs/results)."""

    def figure(path: Path) -> str:
        if images is None:
            return path.relative_to(run.dir).as_posix()
        target = images / f"{prefix}{path.name}"
        shutil.copyfile(path, target)
        return target.name

    lines = [*_stage_lines(run), *_model_lines(run), *_heal_lines(run, figure), *_evaluation_lines(run, figure),
             *_qa_lines(run, figure), *_export_lines(run)]
    return "\n".join(lines) + "\n"


def write_run_report(run: Run) -> Path:
    path = run.dir / RUN_REPORT_FILE
    write_atomic(path, format_run_report(run))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.pipeline.report",
                                     description="Render a finished run's report again, optionally to another place.")
    parser.add_argument("run_dir", help="runs/<run_id>")
    parser.add_argument("--out", help="Markdown file to write (figures go next to it, prefixed by its stem)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
        run = Run(load_config(manifest["config_file"]), run_dir.parent, touch=False)
    except (OSError, KeyError, PipelineError) as exc:
        return fail(exc)
    if not args.out:
        print(write_run_report(run))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = format_run_report(run, images=out.parent, prefix=f"{out.stem}_")
    command = f"python -m compress.run --config {manifest['config_file']}"
    text = text.replace("\n\n## Stages", f"\n\nReproduce: `{command}` then "
                        f"`python -m compress.pipeline.report runs/{run.config.run.id} --out {out.as_posix()}`."
                        "\n\n## Stages", 1)
    write_atomic(out, text)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
