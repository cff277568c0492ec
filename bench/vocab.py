"""Vocabulary trimming on the shipped model, before and after in one run on this machine; writes
docs/results/vocab.md (+ .json).

    python -m bench.vocab

The shipped default (models/tour-guide.gguf, q8_0) has no torch checkpoint in the repository:
models.pretrained.convert dequantises it into one (float32 holding the q8_0 values). That
checkpoint is "before"; compress.vocab trims it against the ship corpus (data.build with
configs/smollm2-ship.toml's [data], built into the work folder) into "after". Both are exported to
q8_0 by export.gguf in this run, so the pair differs in the vocabulary alone.

Measured: tokens, parameters and GGUF bytes; exactness (every corpus text tokenized by both, in
transformers and in llama.cpp; the round-trip probes); decode rate and `brief` answer time through
bench.inference's child processes (before / after alternating, `--rounds` times) with the ratio to
the copy-bandwidth bound; and the facts check: every known place of the coverage file asked in each
style as the app asks it (app.service plans the query, bench.facts picks the interests and scores
the text), greedy, through llama.cpp, before and after, answers compared text for text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from tqdm import tqdm

from app.coverage import Coverage
from app.service import TourGuide, TourRequest
from bench import add_render_flag, facts, rendered_again, reproduce_command
from bench.inference import copy_bandwidth, export_targets, run_in_child
from compress.pipeline.config import load_config
from compress.vocab import (
    ROUND_TRIP_PROBES,
    VocabConfig,
    corpus_texts,
    llama_cpp_round_trip_failures,
    read_plan,
    round_trip_failures,
    template_texts,
    trim_checkpoint,
)
from core.artifacts import write_atomic
from data.build import build
from data.corpus import read_split
from data.poi import SYDNEY, load_pois
from data.sampling import SPLITS
from data.validate import PlaceNames
from models.backends import open_backend
from models.load import load_model
from models.pretrained import convert, llama_cpp_token_ids

ROOT = Path(__file__).resolve().parent.parent
SHIP_CONFIG = ROOT / "configs" / "smollm2-ship.toml"
PAIR = ("before", "after")


def prepare(gguf: Path, work: Path) -> tuple[Path, Path, dict]:
    """The dequantised checkpoint, the ship corpus (each made once) and the trimmed checkpoint."""
    before, corpus, after = work / "before", work / "corpus", work / "after"
    if not (before / "model.safetensors").is_file():
        convert(gguf, before)
    if not (corpus / "train.jsonl").is_file():
        build(load_config(SHIP_CONFIG).data, corpus, progress=False)
    report = trim_checkpoint(before, corpus, after, VocabConfig(max_tokens=load_config(SHIP_CONFIG).vocab.max_tokens))
    return before, corpus, {k: v for k, v in report.items() if k not in ("kept_ids", "new_bytes")}


def same_tensors(a: Path, b: str) -> dict:
    """How many tensors of two GGUFs are bit for bit the same (the shipped file and its
    dequantised checkpoint exported again)."""
    ours, theirs = ({t.name: t for t in GGUFReader(str(path)).tensors} for path in (a, b))
    same = sum(name in theirs and np.array_equal(t.data, theirs[name].data) for name, t in ours.items())
    return {"tensors": len(ours), "identical": same}


def exactness(before: Path, after: Path, ggufs: dict[str, str], corpus: Path) -> dict:
    """Every corpus text (and the template's) tokenized by both vocabularies in llama.cpp, renumbered;
    the round-trip probes in both runtimes, for both (the original loses what its vocabulary lacks)."""
    plan = read_plan(after)
    table = plan.new_id
    _, tokenizer = load_model(str(before))
    texts = corpus_texts(corpus, tokenizer) + template_texts(tokenizer)
    old, new = (llama_cpp_token_ids(Path(ggufs[name]), texts) for name in PAIR)
    same = sum([table.get(i, -1) for i in o] == n for o, n in zip(old, new))
    probes = {name: {"transformers": round_trip_failures(load_model(str(path))[1]),
                     "llama.cpp": llama_cpp_round_trip_failures(ggufs[name])}
              for name, path in zip(PAIR, (before, after))}
    return {"texts": len(texts), "llama_cpp_equal": same, "round_trip_failures": probes, "probes": len(ROUND_TRIP_PROBES),
            "new_bytes": len(plan.new_bytes)}


def speed(targets, corpus: Path, rounds: int, repeats: int, max_tokens: int) -> list[dict]:
    """bench.inference's measurement of each target, alternating before / after `rounds` times, so
    a change in the machine's load falls on both."""
    results = []
    for r in range(rounds):
        bandwidth = copy_bandwidth()  # each round: other jobs depress it too
        for target in targets:
            result = run_in_child(target, str(corpus), repeats, max_tokens)
            print(f"round {r + 1} {target.model}: decode {result['decode_tok_s']:.0f} tok/s, brief "
                  f"{result['brief_s'] * 1000:.0f} ms", flush=True)
            results.append({**result, "round": r + 1, "load_avg": os.getloadavg()[0], "bandwidth_bytes_s": bandwidth})
    return results


def facts_answers(gguf: str, known, styles: tuple[str, ...], limit: int | None, seed: int) -> list[dict]:
    """The app's facts-check requests (bench.facts.measure's, pins on the places, their own
    interests) for the places of `known` (an app.coverage.Coverage), planned by the app's TourGuide
    and answered by its llama.cpp backend; each scored."""
    pois = {p.id: p for p in load_pois(SYDNEY)}
    names = PlaceNames(pois.values())
    rng = random.Random(seed)
    rows = []
    with open_backend("llamacpp", gguf) as backend:
        guide = TourGuide(backend, known)
        for place in tqdm(known.places[:limit], desc=Path(gguf).stem, unit="place"):
            poi = pois[place.poi_id]
            for style in styles:
                body = {"latitude": poi.latitude, "longitude": poi.longitude,
                        "interests": facts.interests_for(poi, "own", rng), "style": style}
                answer = guide.answer(guide.plan(TourRequest.parse(body)))
                checked = facts.check(answer, poi, pois, names, style)
                rows.append({**checked.record(), "text": checked.text, "tokens": answer["timings"]["completion_tokens"]})
    return rows


def compare_facts(before: list[dict], after: list[dict], dropped: list[str]) -> dict:
    """Text for text; the rates of each; which untrimmed answers needed a token the trimmed lacks."""
    def rates(rows):
        n = max(1, len(rows))
        return {"names_place": sum(r["names"] for r in rows) / n, "own_fact": sum(r["own_fact"] for r in rows) / n,
                "other_fact": sum(bool(r["other_facts"]) for r in rows) / n}

    differ = [{"poi_id": b["poi_id"], "style": b["style"], "before": b["text"], "after": a["text"]}
              for b, a in zip(before, after) if b["text"] != a["text"]]
    return {"answers": len(before), "equal": len(before) - len(differ), "differ": differ,
            "before": rates(before), "after": rates(after), "needs_dropped_token": dropped}


def facts_section(ggufs: dict[str, str], known, styles: tuple[str, ...], args, checkpoints: tuple[Path, Path]) -> dict:
    """Both models' answers to the facts-check requests, compared; each answer's scores kept, its
    text only where the two differ or the check missed."""
    answers = {m: facts_answers(ggufs[m], known, styles, args.facts_limit, args.seed) for m in PAIR}
    texts = [r["text"] for r in answers["before"]]
    compared = compare_facts(answers["before"], answers["after"], [texts[k] for k in dropped_in(texts, *checkpoints)])
    kept = {m: [_slim(r) for r in rows] for m, rows in answers.items()}
    return {"places": len(texts) // len(styles), "styles": list(styles), "when": time.strftime("%Y-%m-%d %H:%M %Z"),
            **compared, "answers_before": kept["before"], "answers_after": kept["after"]}


def _slim(row: dict) -> dict:
    """An answer's record as the report keeps it: the text only where the check missed."""
    missed = not (row["names"] and row["own_fact"]) or bool(row["other_facts"])
    return {**row, "missed": missed} if missed else {k: v for k, v in row.items() if k != "text"}


def reused_facts(path: Path) -> dict:
    """The facts section of an earlier run's JSON, with the command that measured it."""
    earlier = json.loads(path.read_text())
    facts_ = {"command": earlier["command"], **earlier["facts"]}
    return {**facts_, **{k: [_slim(r) for r in facts_[k]] for k in ("answers_before", "answers_after")}}


def dropped_in(texts: list[str], before: Path, after: Path) -> list[int]:
    """Indices of texts whose tokens (the untrimmed tokenizer's) include one the trimmed model lacks."""
    kept = set(read_plan(after).kept)
    _, tokenizer = load_model(str(before))
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [k for k, row in enumerate(ids) if any(i not in kept for i in row)]


# ---------------------------------------------------------------- the report


def _bytes(rows: list[dict], model: str) -> int:
    return next(r["weight_bytes"] for r in rows if r["model"] == model)


def _in_round(rows: list[dict], round_: int, key: str, model: str) -> float:
    return next(r[key] for r in rows if r["round"] == round_ and r["model"] == model)


def _size_lines(report: dict) -> list[str]:
    t, p, g = report["trim"]["tokens"], report["trim"]["parameters"], report["gguf"]
    change = lambda a, b: f"{(b - a) / a:+.1%}"  # noqa: E731
    return [
        "## Size", "",
        "| | before | after | change |", "|---|---:|---:|---:|",
        f"| tokens | {t['before']:,} | {t['after']:,} | {change(t['before'], t['after'])} |",
        f"| merges | {t['merges_before']:,} | {t['merges_after']:,} | {change(t['merges_before'], t['merges_after'])} |",
        f"| parameters | {p['before']:,} | {p['after']:,} | {change(p['before'], p['after'])} |",
        f"| GGUF q8_0, bytes | {g['before']['file_bytes']:,} | {g['after']['file_bytes']:,} | "
        f"{change(g['before']['file_bytes'], g['after']['file_bytes'])} |",
        f"| weights read per token, bytes | {g['before']['weight_bytes']:,} | {g['after']['weight_bytes']:,} | "
        f"{change(g['before']['weight_bytes'], g['after']['weight_bytes'])} |", "",
        f"The {t['after']:,} tokens: {t['needed']:,} the corpus's texts and the chat template need (specials "
        f"included), {t['ancestors']:,} more that are merge ancestors of those, the byte tokens the vocabulary had "
        f"({t['bytes'] - t['bytes_new']}) and {t['bytes_new']} byte tokens it lacked, added with zero rows "
        f"(compress.vocab's docstring says why); {t['added']} added/special tokens are among them. "
        f"Target: at most 8,192 ({'met' if t['after'] <= 8192 else 'NOT met'}).", ""]


def _exact_lines(report: dict) -> list[str]:
    e = report["exactness"]
    fails = e["round_trip_failures"]

    def said(name):
        rows = [f"{runtime}: {len(f)} of {e['probes']} probes lose characters" + (f" ({', '.join(repr(x[:24]) for x in f)})"
                                                                         if f else "")
                for runtime, f in fails[name].items()]
        return "; ".join(rows)

    return ["## Exactness", "",
            f"- Every corpus text ({e['texts']:,}: each split's rendered prompt, answer + end of turn, and the whole "
            f"conversation, and the chat template's own text) tokenizes in the trimmed vocabulary to the original's "
            f"tokens renumbered: in transformers all {report['trim']['texts_checked']:,} corpus texts "
            f"(checked by trim_checkpoint before it writes), in llama.cpp {e['llama_cpp_equal']:,} of {e['texts']:,} "
            "(both GGUFs' own vocabularies, Llama(vocab_only=True)).",
            f"- Round trip of the probes (compress.vocab.ROUND_TRIP_PROBES: accents, emoji, CJK, RTL, code, every "
            f"control character, literal specials, the last planes): before — {said('before')}; after — "
            f"{said('after')}.", ""]


def _speed_lines(report: dict) -> list[str]:
    rows = report["speed"]
    bw = max(r["bandwidth_bytes_s"] for r in rows)
    lines = ["## Speed: llama.cpp q8_0 (bench.inference)", "",
             f"Each row a fresh child process of bench.inference: one warm-up, {report['queries']} queries x "
             f"{report['repeats']} repeats, greedy, max {report['max_tokens']} tokens, medians. *bound* = copy "
             f"bandwidth (measured before each round, the best of them: {bw / 1e9:.1f} GB/s) / weight bytes read per "
             "token; *ratio* = decode / bound; *load* = the machine's 1-minute load average when the row finished "
             "(other jobs share its 2 cores).", "",
             "| round | model | decode tok/s | TTFT ms | brief ms (max) | bound tok/s | ratio | peak RSS MiB | load |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bound = bw / r["weight_bytes"]
        lines.append(f"| {r['round']} | {r['model']} | {r['decode_tok_s']:.0f} | {r['ttft_s'] * 1000:.0f} | "
                     f"{r['brief_s'] * 1000:.0f} ({r['brief_max_s'] * 1000:.0f}) | {bound:.0f} | "
                     f"{r['decode_tok_s'] / bound:.2f} | {r['peak_rss'] / 2**20:.0f} | {r['load_avg']:.1f} |")
    ratios = {k: [_in_round(rows, r, k, "after") / _in_round(rows, r, k, "before") for r in sorted({x["round"] for x in rows})]
              for k in ("decode_tok_s", "brief_s")}
    best = {m: (max(r["decode_tok_s"] for r in rows if r["model"] == m), min(r["brief_s"] for r in rows if r["model"] == m))
            for m in PAIR}
    lines += ["", "After / before, round by round (each pair back to back): decode "
              + ", ".join(f"{x:.2f}x" for x in ratios["decode_tok_s"])
              + f" (median {statistics.median(ratios['decode_tok_s']):.2f}x); brief answer "
              + ", ".join(f"{x:.2f}x" for x in ratios["brief_s"]) + f" (median {statistics.median(ratios['brief_s']):.2f}x).",
              f"Best of the rounds (another job only ever slows a row): decode {best['before'][0]:.0f} -> "
              f"{best['after'][0]:.0f} tok/s ({best['after'][0] / best['before'][0]:.2f}x; "
              + " and ".join(f"{best[m][0] * _bytes(rows, m) / bw:.2f}" for m in PAIR)
              + f" of the bound), brief answer {best['before'][1] * 1000:.0f} -> {best['after'][1] * 1000:.0f} ms "
              f"({best['after'][1] / best['before'][1]:.2f}x).", ""]
    return lines


def _facts_lines(report: dict) -> list[str]:
    f = report.get("facts")
    if not f:
        return ["## Facts check", "", "Not run (--facts-styles '').", ""]
    lines = ["## Facts check: the app's prompts, greedy, llama.cpp q8_0", "",
             f"{f['places']} known places x {len(f['styles'])} styles ({', '.join(f['styles'])}), pins on the places, "
             "their own interests: the requests of bench.facts, planned by app.service.TourGuide, scored by "
             f"bench.facts.check. Measured by `{f['command']}`" + (f" ({f['when']})" if f.get("when") else "")
             + ".", "",
             "| model | answers | names the place | states its fact | states another place's |", "|---|---:|---:|---:|---:|"]
    for m in PAIR:
        r = f[m]
        lines.append(f"| {m} | {f['answers']} | {r['names_place']:.1%} | {r['own_fact']:.1%} | {r['other_fact']:.1%} |")
    lines += ["", f"- Answers equal text for text: {f['equal']} of {f['answers']}.",
              f"- Untrimmed answers whose text, tokenized, uses a token the trimmed model lacks: "
              f"{len(f['needs_dropped_token'])} (a text-level count: the ids the untrimmed model generated are not "
              "exposed by the llama.cpp backend; the test suite checks the argmax rule id by id on a tiny model)."]
    lines += [f"- differs: `{d['poi_id']}` ({d['style']}): before \"{d['before']}\" / after \"{d['after']}\""
              for d in f["differ"][:8]]
    return lines + [""]


def _shipped(s: dict) -> str:
    said = (f"Re-quantised, the dequantised q8_0 values give back the shipped file's tensors: {s['identical']} of "
            f"{s['tensors']} are bit for bit those of `{Path(s['file']).name}`")
    return said + (", so *before* is the shipped model." if s["identical"] == s["tensors"] else
                   f"; {s['tensors'] - s['identical']} differ.")


def render(report: dict) -> str:
    return "\n".join([
        "# Vocabulary trimming (compress.vocab) on the shipped model", "",
        f"Command: `{report['command']}`  ", f"Machine: {report['machine']}"
        + (f"; run {report['when']}." if report.get("when") else "."), "",
        f"Before: `models/tour-guide.gguf` as shipped when this ran ({report['gguf']['before']['file_bytes']:,} bytes, "
        "q8_0; a later default is trimmed by the pipeline's [vocab] stage, the same compress.vocab) "
        "dequantised to a float32 checkpoint by models.pretrained.convert "
        "(its torch checkpoint is not in the repository). After: that checkpoint trimmed by compress.vocab against "
        "the ship corpus (configs/smollm2-ship.toml's [data], built by data.build into the work folder the first time: "
        f"{report['corpus_rows']:,} rows). Both exported to q8_0 by export.gguf in this run, so the two differ in "
        f"the vocabulary alone. {_shipped(report['shipped'])}", "",
        *_size_lines(report), *_exact_lines(report), *_speed_lines(report), *_facts_lines(report)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vocab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=str(ROOT / "models" / "tour-guide.gguf"), help="the model to trim")
    parser.add_argument("--coverage", default=None, help="its known places (default: NAME.coverage.json beside it)")
    parser.add_argument("--work", default=str(ROOT / "out" / "bench-vocab"), help="checkpoints, corpus, GGUFs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "vocab.md"))
    parser.add_argument("--rounds", type=int, default=2, help="before / after speed pairs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--facts-styles", default="brief,stimulate,detailed", help="'' skips the facts check")
    parser.add_argument("--facts-limit", type=int, default=None, help="only the first N known places")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-facts", action="store_true",
                        help="keep the facts section of the JSON beside --out (a run of ~40 min) and measure the rest")
    add_render_flag(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if rendered_again(args, out, render):
        return 0
    gguf, work = Path(args.gguf), Path(args.work)
    known = Coverage.load(args.coverage) if args.coverage else TourGuide.coverage_for(str(gguf))
    if known is None:
        parser.error(f"{gguf} has no coverage file beside it: give --coverage")
    before, corpus, trim = prepare(gguf, work)
    after = work / "after"
    targets = export_targets({"before": str(before), "after": str(after)}, work, (("llamacpp", "q8_0"),))
    ggufs = {t.model: t.path for t in targets}
    report = {"command": reproduce_command("bench.vocab", argv if argv is not None else sys.argv[1:], out, "vocab.md"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"{platform.python_version()}", "when": time.strftime("%Y-%m-%d %H:%M %Z"),
              "trim": trim, "corpus_rows": sum(len(read_split(corpus, s)) for s in SPLITS),
              "exactness": exactness(before, after, ggufs, corpus),
              "shipped": {"file": str(gguf), **same_tensors(gguf, ggufs["before"])}}
    report["speed"] = speed(targets, corpus, args.rounds, args.repeats, args.max_tokens)
    report["gguf"] = {m: {k: next(r[k] for r in report["speed"] if r["model"] == m)
                          for k in ("file_bytes", "weight_bytes")} for m in PAIR}
    report.update(queries=report["speed"][0]["requests"] // args.repeats, repeats=args.repeats,
                  max_tokens=args.max_tokens)
    styles = tuple(s for s in args.facts_styles.split(",") if s)
    if args.reuse_facts:
        report["facts"] = reused_facts(out.with_suffix(".json"))
    elif styles:
        report["facts"] = {**facts_section(ggufs, known, styles, args, (before, after)), "command": report["command"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1, ensure_ascii=False))
    write_atomic(out, render(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
