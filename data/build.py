"""Build the tour corpus: POIs -> Plus Code cells -> sampled requests -> validated descriptions.

    python -m data.build --backend template --out out/corpus
    python -m data.build --backend anthropic --out out/corpus-claude
    python -m data.build --backend openai --base-url http://gpu-box:8000/v1 --model Qwen/Qwen3-32B --out out/corpus-qwen

Writes to --out: train.jsonl, val.jsonl, test.jsonl (one sample a line: plus_code, short_code,
locality, interests, style, poi_ids, messages — the chat prompt — and target), texts/{plus_code}.txt
(every accepted description of a cell, for reading), rejects.jsonl (every rejected try: its text,
why, which try it was and whether it was the last), and snapshot.json (SHA-256 of every input file,
prompt template and output, the settings and counts). A text must pass data.validate, the grounding
check included (--grounding strict|lenient|off); an LLM writer gets a rejected text back with the
reasons, up to --rewrites times. LLM answers, rewrites included, are cached on disk as they arrive:
an interrupted run loses nothing and a rerun of the same build sends no request.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from core.artifacts import sha256_file, write_atomic
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from data.corpus import write_split
from data.generate.base import GenerationRequest, GenerationResult
from data.generate.registry import BACKENDS, DEFAULT_CLAUDE, REVISING_BACKENDS, WriterOptions, make_generator
from data.generate.rewrite import RewriteTally, write_checked
from data.generate.template import OPENERS
from data.generate.template import __file__ as TEMPLATE_SOURCE
from data.generate.writer_prompt import REWRITE_FILE, TEMPLATE_FILES
from data.grounding import GROUNDING_MODES, check_mode
from data.poi import POI, SYDNEY, POIError
from data.poi.loaders import load_any
from data.prompt import TourQuery, build_messages
from data.sampling import HOLDOUTS, SPLITS, STRATEGIES, SamplingConfig, cells_from_pois, split_requests
from data.validate import PlaceNames, text_problems

# Help for the fields of the sampling and writer options, which live with the code that reads them.
SAMPLING_HELP = {
    "strategy": {"help": "uniform: same count per cell; interest-balanced: each interest equally often; "
                         "density: cells in POI-dense areas more often", "choices": STRATEGIES},
    "samples_per_cell": "average samples per cell",
    "seed": "seeds the split, the sampling and the wording",
    "val_fraction": "share of cells (or of each cell's requests) held out for validation",
    "test_fraction": "share of cells (or of each cell's requests) held out for test",
    "holdout": {"help": "cells: val/test are places never trained on; requests: every place in every split "
                        "(the corpus of a model that ships knowing them all)", "choices": HOLDOUTS},
    "off_interest_rate": "how often a request adds an interest the place lacks",
    "untagged_rate": "how often a request names only interests the place lacks",
    "unknown_rate": "share of requests about cells with no POI within 500 m, answered with a refusal",
    "unknown_near_share": "share of those cells drawn 0.5-2 km from a POI (near misses) rather than anywhere",
    "unknown_near": "how near misses are drawn: ring (0.5-2 km from a random POI) or block (anywhere in a random "
                    "Plus Code block that holds a POI)",
    "max_interests": "most interests one request names",
    "country": "country named in the writer's prompt",
    "language": "language of the descriptions",
}
WRITER_HELP = {
    "model": f"model name (anthropic default: {DEFAULT_CLAUDE}; openai: required)",
    "base_url": "server URL, e.g. http://127.0.0.1:8000/v1 for vLLM (openai: required)",
    "cache_dir": "on-disk cache of answers (unset: .cache/generate)",
    "concurrency": "requests in flight at once",
    "max_retries": "retries on 429, 5xx, timeouts, malformed bodies",
    "timeout": "seconds per request",
    "max_tokens": "answer length cap",
    "temperature": "sampling temperature (openai default 0.7; the Anthropic API refuses one)",
    "price_in": "USD per million input tokens (overrides the built-in table)",
    "price_out": "USD per million output tokens",
    "openers": {"help": "template: varied (six opening words) or one-word (every description opens with "
                        "'You', as every refusal with 'I')", "choices": tuple(OPENERS)},
}


@dataclass(frozen=True)
class BuildConfig:
    """How the corpus is built: the CLI's flags and the pipeline's [data] section (the output
    folder is not a setting: build() takes it)."""

    pois: tuple[Path, ...] = field(default=(), metadata={
        "help": f"POI files (.jsonl in our schema, .csv, or NYC LPC .geojson); unset: the shipped {SYDNEY.name}"})
    backend: str = field(default="template", metadata={"help": "who writes the descriptions", "choices": BACKENDS})
    sampling: SamplingConfig = field(default_factory=SamplingConfig,
                                     metadata={"help": "sampling", "fields": SAMPLING_HELP})
    writer: WriterOptions = field(default_factory=WriterOptions,
                                  metadata={"help": "writer models (anthropic, openai)", "fields": WRITER_HELP})
    limit: int | None = field(default=None, metadata={
        "help": "at most this many requests per split: a cheap trial of a paid backend"})
    grounding: str = field(default="strict", metadata={
        "help": "how numbers and names of a text are held to its request's facts (data.grounding): strict, "
                "lenient (digits only; each word of a name somewhere in the facts) or off", "choices": GROUNDING_MODES})
    rewrites: int = field(default=2, metadata={
        "help": "times a rejected text goes back to its writer with the reasons (anthropic, openai)"})

    def __post_init__(self) -> None:
        check_mode(self.grounding)
        if self.rewrites < 0:
            raise ValueError(f"rewrites must be 0 or more, got {self.rewrites}")

    def rounds_of_rewrites(self) -> int:
        """Rewrites this build makes: a deterministic writer would only write the same text again."""
        return self.rewrites if self.backend in REVISING_BACKENDS else 0

    def poi_files(self) -> tuple[Path, ...]:
        return tuple(Path(p) for p in self.pois) or (SYDNEY,)


def _row(request: GenerationRequest, result: GenerationResult) -> dict:
    query = TourQuery(
        plus_code=request.plus_code,
        short_code=request.short_code,
        locality=request.locality,
        interests=request.interests,
        style=request.style,
    )
    return {
        "plus_code": request.plus_code,
        "short_code": request.short_code,
        "locality": request.locality,
        "interests": list(request.interests),
        "style": request.style,
        "poi_ids": request.poi_ids,
        "messages": build_messages(query),
        "target": result.text,
        "writer": result.model,
    }


def load_sources(paths: tuple[Path, ...]) -> list[POI]:
    pois: list[POI] = []
    for path in paths:
        pois += load_any(path)
    dupes = [k for k, n in Counter(p.id for p in pois).items() if n > 1]
    if dupes:
        raise POIError(f"POI ids repeat across sources: {dupes[:10]}")
    return pois


def source_hashes(config: BuildConfig) -> dict[str, dict[str, str]]:
    """The contents a corpus is made from besides its config: the POI files, and the writer's
    prompts and template code (a reworded template is a different corpus); the rewrite prompt when
    the build sends rejected texts back."""
    rewrite = (REWRITE_FILE,) if config.rounds_of_rewrites() else ()
    return {
        "inputs": {_display_path(p): sha256_file(p) for p in config.poi_files()},
        "prompt_templates": {
            str(Path(p).relative_to(Path(TEMPLATE_SOURCE).parents[2])): sha256_file(Path(p))
            for p in (*TEMPLATE_FILES, *rewrite, Path(TEMPLATE_SOURCE))
        },
    }


def build(config: BuildConfig, out: str | Path, progress: bool = True) -> dict:
    """Build the corpus into `out`; returns the summary that is also stored in snapshot.json."""
    pois = load_sources(config.poi_files())
    cells = cells_from_pois(pois)
    by_split = split_requests(cells, config.sampling, pois)
    requests = [(split, r) for split in SPLITS for r in by_split[split][: config.limit]]

    generator = make_generator(config.backend, config.writer)
    try:
        accepted, rejects, tally = _write(generator, requests, PlaceNames(pois), config, progress)
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()

    out = Path(out)
    (out / "texts").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        rows = [accepted[k] for k in sorted(accepted) if requests[k][0] == split]
        counts[split] = len(rows)
        write_split(out, split, rows)
    write_split(out, "rejects", rejects)
    _write_texts(out / "texts", [accepted[k] for k in sorted(accepted)], {c.plus_code: c for c in cells})

    final = [r for r in rejects if r["final"]]
    accounting = getattr(generator, "accounting", None)
    summary = {
        "backend": config.backend,
        "pois": len(pois),
        "cells": {s: len({r.plus_code for r in by_split[s]}) for s in SPLITS},
        "requests": len(requests),
        "accepted": counts,
        "rejected": len(final),
        "reject_reasons": dict(Counter(p.split(":")[0] for r in final for p in r["reasons"]).most_common()),
        "grounding": config.grounding,
        "rewrites": tally.to_dict(),
        "accounting": accounting.to_dict() if accounting is not None else None,
    }
    snapshot = {
        **summary,
        **source_hashes(config),
        "outputs": {f"{s}.jsonl": sha256_file(out / f"{s}.jsonl") for s in SPLITS},
        "config": {
            "backend": config.backend,
            "sampling": asdict(config.sampling),
            "writer": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config.writer).items()},
            "limit": config.limit,
            "grounding": config.grounding,
            "rewrites": config.rewrites,
        },
    }
    write_atomic(out / "snapshot.json", json.dumps(snapshot, indent=2, ensure_ascii=False) + "\n")
    return summary


def _write(generator, requests: list[tuple[str, GenerationRequest]], names: PlaceNames, config: BuildConfig,
           progress: bool) -> tuple[dict[int, dict], list[dict], RewriteTally]:
    """Every try of every request, checked: (accepted rows by request index, every rejected try in
    request order, the rounds' tally)."""
    rewrites = config.rounds_of_rewrites()
    tally = RewriteTally(requests=len(requests), rewrites=rewrites)
    accepted: dict[int, dict] = {}
    rejects: list[dict] = []

    def check(text: str, request: GenerationRequest) -> list[str]:
        return text_problems(text, request, names, config.grounding)

    bar = tqdm(total=len(requests), desc=f"writing ({config.backend})", unit="text", disable=not progress)
    try:
        for attempt in write_checked(generator, [r for _, r in requests], check, rewrites, tally):
            bar.update(1)
            if not attempt.final:
                bar.total += 1
                bar.refresh()
            request = requests[attempt.index][1]
            if attempt.problems:
                rejects.append({"split": requests[attempt.index][0], "plus_code": request.plus_code,
                                "poi_ids": request.poi_ids, "style": request.style,
                                "interests": list(request.interests), "text": attempt.text,
                                "reasons": attempt.problems, "try": attempt.number, "final": attempt.final,
                                "order": (attempt.index, attempt.number)})
            else:
                accepted[attempt.index] = _row(request, attempt.outcome)
    except KeyboardInterrupt:
        bar.close()
        raise SystemExit(
            f"interrupted after {len(accepted) + len(rejects)} tries for {len(requests)} requests; "
            "answers received so far are cached, rerun the same command to continue"
        ) from None
    bar.close()
    rejects.sort(key=lambda r: r.pop("order"))
    return accepted, rejects, tally


def _display_path(path: Path) -> str:
    """Relative to the working directory when inside it, so snapshots compare across clones."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def _write_texts(folder: Path, rows: list[dict], cells: dict) -> None:
    by_cell: dict[str, list[dict]] = {}
    for row in rows:
        by_cell.setdefault(row["plus_code"], []).append(row)
    for code, cell_rows in by_cell.items():
        cell = cells.get(code)  # None: an unknown cell, with no place to name
        what = ", ".join(p.name for p in cell.pois) if cell else "no known place"
        lines = [f"# {code} ({cell_rows[0]['short_code']} {cell_rows[0]['locality']}): {what}", ""]
        for row in cell_rows:
            lines += [f"## {row['style']} · {', '.join(row['interests'])}", row["target"], ""]
        write_atomic(folder / f"{code}.txt", "\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m data.build", "Build the tour corpus (train/val/test JSONL) from POI facts.")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    add_config_flags(parser, BuildConfig)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _build, (POIError, ValueError, OSError))


def _build(args) -> int:
    summary = build(config_from_args(BuildConfig, args), args.out, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
