"""runs/<run_id>/report.md: what a pipeline run did, what it made, and how good each model is."""

from __future__ import annotations

import json
from pathlib import Path

SIZE_FIELDS = (("layers", "num_hidden_layers"), ("hidden", "hidden_size"), ("heads", "num_attention_heads"),
               ("kv heads", "num_key_value_heads"), ("FFN", "intermediate_size"))


def model_row(name: str, folder: Path) -> str | None:
    """One Markdown row of a model directory's shape, parameter count and weight-file size."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    from transformers import AutoConfig

    from models.shapes import parameter_count

    config = AutoConfig.from_pretrained(str(folder))
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    cells = [str(getattr(config, key)) for _, key in SIZE_FIELDS]
    return f"| {name} | " + " | ".join(cells) + f" | {parameter_count(config) / 1e6:.2f}M | {size / 2**20:.1f} MiB |"


def _models(run) -> dict[str, Path]:
    from compress.run import _teacher_path, evaluated_models

    found = {"teacher": Path(_teacher_path(run))}
    found.update({name: Path(path) for name, path in evaluated_models(run).items()})
    return found


def _heal_reports(run) -> dict[str, dict]:
    from compress.heal import REPORT_FILE

    reports = {}
    for name in ("student", "depth-only"):
        path = run.stage_dir("heal") / name / REPORT_FILE
        if path.is_file():
            report = json.loads(path.read_text())
            if "schedule" in report:  # iterative: one curve per step
                for step in sorted((path.parent).glob("step*/" + REPORT_FILE)):
                    reports[f"{name} {step.parent.name}"] = json.loads(step.read_text())
            else:
                reports[name] = report
    return reports


def format_run_report(run, images: Path | None = None, prefix: str = "") -> str:
    """The report's Markdown. Figures go into the run directory, or into `images` as
    `{prefix}name.png` (for a copy of the report kept elsewhere, e.g. docs/results)."""
    import shutil

    from compress.run import STAGES

    def figure(path: Path) -> str:
        if images is None:
            return path.relative_to(run.dir).as_posix()
        target = images / f"{prefix}{path.name}"
        shutil.copyfile(path, target)
        return target.name

    m = run.manifest
    lines = [f"# Pipeline run `{m['run_id']}`", "",
             f"Config `{m.get('config_file')}`; git commit `{(m.get('git_commit') or 'unknown')[:12]}`; "
             + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v) + ".", "",
             "## Stages", "", "| stage | status | seconds | result |", "|---|---|---:|---|"]
    total = 0.0
    for stage in STAGES:
        rec = m["stages"].get(stage)
        if rec is None:
            lines.append(f"| {stage} | not run | | |")
            continue
        total += rec.get("seconds") or 0.0
        summary = rec.get("error") or _short(rec.get("summary"))
        lines.append(f"| {stage} | {rec['status']} | {rec.get('seconds', '')} | {summary} |")
    lines += ["", f"Time spent in stages this run's records cover: {total / 60:.1f} min. A skipped stage keeps the "
              "time of the invocation that ran it.", "", "## Models", "",
              "| model | " + " | ".join(k for k, _ in SIZE_FIELDS) + " | params | weights |",
              "|---|" + "---:|" * (len(SIZE_FIELDS) + 2)]
    for name, folder in _models(run).items():
        row = model_row(name, folder)
        if row:
            lines.append(row)
    heal = _heal_reports(run)
    if heal:
        from compress.plots import plot_heal_curves

        lines += ["", "## Healing", "", "Validation: teacher-forced on the held-out rows of the config's `val_split`.",
                  "", "| healed | steps | stopped | KL before | KL after | top-1 before | top-1 after | ppl before | ppl after |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in heal.items():
            b, a = r["before"], r["after"]
            lines.append(f"| {name} | {r['steps']} | {r['stopped'] or 'ran all steps'} | {b['kl']:.4f} | {a['kl']:.4f} | "
                         f"{b['top1_agreement']:.3f} | {a['top1_agreement']:.3f} | {b['perplexity']:.2f} | "
                         f"{a['perplexity']:.2f} |")
        lines += ["", f"![healing]({figure(plot_heal_curves(heal, run.dir / 'heal_curves.png'))})"]
    metrics_file = run.stage_dir("evaluate") / "metrics.json"
    if metrics_file.is_file() and m["stages"].get("evaluate", {}).get("status") == "done":
        from compress.evaluate import METRIC_LEGEND, metric_table

        metrics = json.loads(metrics_file.read_text())
        lines += ["", "## Evaluation", ""]
        for split in metrics["config"]["splits"]:
            lines += [f"### Split `{split}`", "", *metric_table(metrics, split), "",
                      f"![{split}]({figure(run.stage_dir('evaluate') / f'metrics_{split}.png')})", ""]
        lines += [METRIC_LEGEND]
    from compress.transport.qa import read_log

    qa = read_log(run.dir)
    if qa:
        from compress.plots import plot_qa

        lines += ["", "## QA metrics", "", "From `python -m compress.transport.qa` (runs/<id>/logs/metrics.jsonl), "
                  "teacher-forced on held-out answers: KL(reference || candidate) and surprisal in nats per token.", "",
                  "| candidate | when | split | tokens | logit KL | surprisal (reference) | mean hidden cosine |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for row in qa:
            cos = row.get("hidden_state_cosine")
            lines.append(f"| {row['label']} | {row['time'][:16]} | {row['config']['split']} | {row['tokens']} | "
                         f"{row.get('logit_kl', float('nan')):.4f} | {row.get('surprisal', float('nan')):.3f} "
                         f"({row.get('surprisal_reference', float('nan')):.3f}) | "
                         + (f"{sum(cos) / len(cos):.3f}" if cos else "–") + " |")
        lines += ["", f"![QA]({figure(plot_qa(qa, run.dir / 'qa_metrics.png'))})"]
    exported = m["stages"].get("export", {})
    if exported.get("status") == "done":
        lines += ["", "## Exports", "", "The healed student for offline runtimes; *answer* is one greedy answer to the "
                  "first test prompt through that runtime, compared with torch's.", "",
                  "| export | file | MiB | answer |", "|---|---|---:|---|"]
        for name, e in exported["summary"].items():
            answer = e.get("answer") or {}
            said = ("same as torch" if answer.get("same_as_torch") else "differs from torch") if answer.get("ran") \
                else (f"not run: {answer['why']}" if answer else "not checked")
            lines.append(f"| {name} | `{e['file']}` | {e['bytes'] / 2**20:.2f} | {said} |")
            lines += [f"| | | | {note} |" for note in e.get("notes", [])]
    return "\n".join(lines) + "\n"


def _short(summary) -> str:
    if not summary:
        return ""
    text = json.dumps(summary, separators=(", ", ": "))
    return (text[:160] + " ...") if len(text) > 160 else text


def write_run_report(run) -> Path:
    from core.artifacts import write_atomic

    from compress.run import REPORT

    path = run.dir / REPORT
    write_atomic(path, format_run_report(run))
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from compress.run import MANIFEST, PipelineError, Run, load_config

    parser = argparse.ArgumentParser(prog="python -m compress.pipeline_report",
                                     description="Render a finished run's report again, optionally to another place.")
    parser.add_argument("run_dir", help="runs/<run_id>")
    parser.add_argument("--out", help="Markdown file to write (figures go next to it, prefixed by its stem)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
        run = Run(load_config(manifest["config_file"]), run_dir.parent, touch=False)
    except (OSError, KeyError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.out:
        print(write_run_report(run))
        return 0
    from core.artifacts import write_atomic

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = format_run_report(run, images=out.parent, prefix=f"{out.stem}_")
    command = f"python -m compress.run --config {manifest['config_file']}"
    text = text.replace("\n\n## Stages", f"\n\nReproduce: `{command}` then "
                        f"`python -m compress.pipeline_report runs/{run.config.run.id} --out {out.as_posix()}`.\n\n## Stages", 1)
    write_atomic(out, text)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
