"""Run every stage that is not current, in order, recording each in the manifest; the command line
of `python -m compress.run`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from compress.pipeline import __doc__ as PIPELINE_DOC
from compress.pipeline.config import PipelineConfig, PipelineError, load_config
from compress.pipeline.manifest import Run, digest, outputs
from compress.pipeline.plan import dry_run
from compress.pipeline.report import write_run_report
from compress.pipeline.stages import BY_NAME, STAGE_NAMES, STAGES, Stage
from core.artifacts import RUN_REPORT_FILE
from core.cli import fail


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _run_stage(run: Run, stage: Stage, label: str, log) -> None:
    """Run one stage and record it: running, then done with its outputs, or failed / interrupted."""
    rec = {"status": "running", "fingerprint": run.fingerprint(stage), "started": _now()}
    previous = run.record(stage.name).get("outputs")
    run.manifest["stages"][stage.name] = rec
    run.save()
    log(f"{label}: running")
    began = time.monotonic()
    try:
        summary = stage.run(run)
        missing = [f for f in stage.outputs if not (run.stage_dir(stage.name) / f).is_file()]
        if missing:
            raise PipelineError(f"stage {stage.name} finished without writing {', '.join(missing)}")
    except KeyboardInterrupt:
        rec.update(status="interrupted", seconds=round(time.monotonic() - began, 1))
        run.save()
        raise
    except Exception as exc:
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", seconds=round(time.monotonic() - began, 1))
        run.save()
        raise
    found = outputs(run.stage_dir(stage.name), previous)
    rec.update(status="done", finished=_now(), seconds=round(time.monotonic() - began, 1), summary=summary,
               outputs=found, digest=digest(found))
    run.save()
    log(f"{label}: done in {rec['seconds']:.1f} s")


def _check_skips(skip: tuple[str, ...], stages: tuple[Stage, ...]) -> None:
    """A stage may be left out only if no stage that runs after it (of `stages`) reads its outputs."""
    for name in skip:
        readers = [s.name for s in stages if name in s.reads and s.name not in skip]
        if readers:
            raise PipelineError(f"cannot skip {name}: {', '.join(readers)} read its outputs")


def run_pipeline(config: PipelineConfig, runs_dir: str | Path = "runs", start: str | None = None,
                 until: str | None = None, log=print, skip: tuple[str, ...] = ()) -> Run:
    """Run every stage that is not current (and `start` and everything after it regardless), but
    those in `skip` (stages no later one reads, e.g. evaluate, to measure an export sooner)."""
    for name in (start, until, *skip):
        if name is not None and name not in BY_NAME:
            raise PipelineError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    stages = STAGES[:STAGE_NAMES.index(until) + 1] if until else STAGES
    _check_skips(skip, stages)
    torch.manual_seed(config.run.seed)
    run = Run(config, Path(runs_dir))
    forced = set(STAGE_NAMES[STAGE_NAMES.index(start):]) if start else set()
    try:
        for i, stage in enumerate(stages):
            label = f"[{i + 1}/{len(STAGES)}] {stage.name}"
            if stage.name in skip:
                log(f"{label}: skipped as asked")
                continue
            if stage.name not in forced and run.is_current(stage):
                log(f"{label}: unchanged, skipped")
                continue
            _run_stage(run, stage, label, log)
    finally:
        write_run_report(run)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m compress.run", description=PIPELINE_DOC.split("\n\n")[0],
                                     epilog="Example: python -m compress.run --config configs/micro.toml")
    parser.add_argument("--config", required=True, help="a TOML file, e.g. configs/micro.toml")
    parser.add_argument("--runs-dir", default="runs", help="where run directories go (default runs/)")
    parser.add_argument("--from", dest="start", choices=STAGE_NAMES, help="rerun this stage and every later one")
    parser.add_argument("--until", choices=STAGE_NAMES, help="stop after this stage")
    parser.add_argument("--skip", action="append", default=[], choices=STAGE_NAMES,
                        help="leave this stage out (repeatable); only one whose outputs no later stage reads")
    parser.add_argument("--dry-run", action="store_true", help="plan shapes, parameters and memory; load no weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.dry_run:
            print(dry_run(config))
            return 0
        run = run_pipeline(config, args.runs_dir, args.start, args.until, skip=tuple(args.skip))
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    except PipelineError as exc:
        return fail(exc)
    print(f"run {run.dir}: report {run.dir / RUN_REPORT_FILE}")
    return 0
