"""The openai corpus writer end to end against a real OpenAI-compatible server: llama.cpp's own
(`python -m llama_cpp.server`) serving the tiny shipped GGUF (models/tour-guide-demo.gguf).

That model was never taught the writer's prompt, so it writes poor descriptions: most are rejected,
which is what this test needs to see rejects, reasons and rewrites go through a real server. The
error paths (429, timeouts, broken bodies) stay with tests/fake_llm_server.py, where they can be
scripted.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES

from bench import serve
from data.generate.base import GenerationRequest
from data.poi import load_pois
from data.validate import PlaceNames, text_problems

ROOT = Path(__file__).resolve().parents[1]
DEMO_GGUF = ROOT / "models" / "tour-guide-demo.gguf"
POIS = FIXTURES / "pois_small.jsonl"


def serve_demo():
    """llama.cpp's server on a free loopback port, up within a bounded wait, stopped when the block ends."""
    return serve([sys.executable, "-m", "llama_cpp.server", "--model", str(DEMO_GGUF), "--host", "127.0.0.1",
                  "--port", "{port}", "--n_ctx", "2048", "--n_threads", "1", "--model_alias", "demo",
                  "--verbose", "False"], "/v1/models", timeout_s=60)


def run_build(url: str, out: Path, cache: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "data.build", "--backend", "openai", "--base-url", f"{url}/v1", "--model", "demo",
         "--pois", str(POIS), "--samples-per-cell", "2", "--limit", "2", "--max-tokens", "48", "--rewrites", "1",
         "--concurrency", "1", "--max-retries", "1", "--timeout", "60", "--out", str(out), "--cache-dir", str(cache),
         "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_openai_writer_through_llama_cpp_s_server_writes_checks_rewrites_and_caches(tmp_path):
    with serve_demo() as url:
        summary = run_build(url, tmp_path / "corpus", tmp_path / "cache")

    # accounting: every try was one answered request; llama.cpp reports its token counts
    tally, accounting = summary["rewrites"], summary["accounting"]
    assert summary["requests"] == tally["requests"] == 4
    assert tally["tries"] == accounting["answered"] + accounting["failures"] > tally["requests"]  # rewrites were sent
    assert accounting["requests_sent"] == accounting["answered"] + accounting["retries"] + accounting["failures"]
    assert accounting["cache_hits"] == 0 and accounting["answered"] >= 1
    assert accounting["input_tokens"] > 0 and accounting["output_tokens"] > 0
    assert tally["input_tokens"] == accounting["input_tokens"] and tally["timed_tries"] == accounting["answered"]
    assert [r["sent"] for r in tally["rounds"]] == [4, tally["tries"] - 4]
    assert accounting["model"] == "demo"

    # caching: one file per answered try, a rewrite under its own key
    assert len(list((tmp_path / "cache").glob("*.json"))) == accounting["answered"]

    # rejects: every rejected try with its reasons; a grounding reason quotes a span of its text
    rejects = lines(tmp_path / "corpus" / "rejects.jsonl")
    assert len(rejects) == sum(r["rejected"] + r["failed"] for r in tally["rounds"])
    assert rejects and all(r["reasons"] for r in rejects)
    for reject in rejects:
        assert reject["final"] == (reject["try"] == 1 or reject["text"] is None)
        for reason in reject["reasons"]:
            if reason.startswith("grounding:"):
                quoted = reason.split(" ", 2)[2].rsplit(" is not in the facts", 1)[0]
                assert ast.literal_eval(quoted) in reject["text"]  # the span, quoted as Python does
    assert summary["rejected"] == sum(r["final"] for r in rejects)

    # what was accepted passes the checks again
    pois = {p.id: p for p in load_pois(POIS)}
    names = PlaceNames(pois.values())
    accepted = [row for split in ("train", "val", "test") for row in lines(tmp_path / "corpus" / f"{split}.jsonl")]
    assert len(accepted) == tally["accepted"] == sum(summary["accepted"].values())
    for row in accepted:
        request = GenerationRequest(row["plus_code"], row["short_code"], row["locality"],
                                    tuple(pois[i] for i in row["poi_ids"]), tuple(row["interests"]), row["style"])
        assert text_problems(row["target"], request, names) == []

    # a rerun sends nothing: with the server gone (the block above stopped it) it still writes the
    # same corpus, from the cache
    again = run_build(url, tmp_path / "again", tmp_path / "cache")
    assert again["accounting"]["requests_sent"] == 0
    assert again["accounting"]["cache_hits"] == accounting["answered"]
    assert again["rewrites"] == tally
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "corpus" / name).read_bytes()


def test_the_corpus_llm_bench_runs_both_checks_and_renders_its_report(tmp_path):
    from bench.corpus_llm import main

    out = tmp_path / "corpus-llm.md"
    assert main(["--gguf", str(DEMO_GGUF), "--per-split", "1", "--rewrites", "1", "--max-tokens", "24",
                 "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert set(report["runs"]) == {"off", "strict"}
    for run in report["runs"].values():
        assert run["summary"]["requests"] == 3 and run["summary"]["grounding"] in ("off", "strict")
    assert report["review"]["accepted"] == report["runs"]["strict"]["summary"]["rewrites"]["accepted"]
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Corpus written by tour-guide-demo through llama.cpp's server")
    assert report["command"].startswith("python -m bench.corpus_llm --gguf ") and report["command"] in text
    assert "| accepted, first write |" in text and "Rejection reasons, grounding strict" in text
    assert (tmp_path / "work" / "review.md").is_file()
