"""The offline app's model in headless chromium against llama-cpp-python on the same GGUF and the
same machine: time to first token, decode tokens/s, cold start (the first load, which fills the
service worker's cache, and a cached load), and whether the greedy answers agree; writes
docs/results/offline.md (+ .json) and a screenshot of the page at a phone's size.

    python -m bench.offline [--threads 1,2] [--out docs/results/offline.md] [--screenshot docs/offline-phone.png]

The site is built with app.offline (`python -m app.offline build`) into a temporary folder and served
by `python -m app.offline serve`; the browser is Debian's chromium driven by Playwright, as in the
tests. The native side is the server's own backend (models.backends, llama.cpp through
llama-cpp-python) with the same thread count. Both answer the same requests, greedy, in turn.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import ROOT, add_render_flag, rendered_again, reproduce_command, serve
from core.artifacts import write_atomic
from core.cli import fail

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
# Known places of the shipped model, each asked in two styles (a detailed answer would only add
# decode time on a shared 2-core machine; the rates are per token).
PLACES = ("sydney-opera-house", "sydney-harbour-bridge", "bondi-beach")
STYLES = (("brief", ["architecture", "history"]), ("stimulate", ["history", "views"]))
SHOT_LINK = "?lat=-33.85776&lon=151.21399&interests=architecture,history&style=brief&ask=1"


def bench_requests(places: list[dict]) -> list[dict]:
    by_id = {p["poi_id"]: p for p in places}
    return [{"latitude": by_id[i]["latitude"], "longitude": by_id[i]["longitude"], "interests": interests,
             "style": style} for i in PLACES if i in by_id for style, interests in STYLES]


def wait_ready(page, state: str = "ready", timeout_s: float = 600) -> None:
    page.wait_for_function("s => [s, 'error'].includes(document.body.dataset.state)", arg=state,
                           timeout=timeout_s * 1000)
    if page.evaluate("document.body.dataset.state") == "error":
        raise RuntimeError(f"the page failed: {page.inner_text('#status')}")


def load_times(page, started: float) -> dict:
    timings = page.evaluate("window.tourGuide.timings")
    return {"wall_s": time.perf_counter() - started, **{k: timings[k] for k in (
        "offline_ready_ms", "model_fetch_ms", "model_load_ms", "ready_ms", "threads", "multithread")}}


def fastest(answers: list[dict], total) -> dict:
    """Of a request's repeats, the one that took the least time: on a shared machine, the one least
    disturbed. Greedy answers repeat word for word, so only the timings differ."""
    if len({a["description"] for a in answers}) != 1:
        raise RuntimeError("a greedy answer changed between repeats")
    return min(answers, key=total)


def browser_side(url: str, requests: list[dict], threads: int, browser, repeats: int) -> dict:
    """A fresh profile: the first load (the service worker fetches and keeps everything), a cached
    load (reload), then every request answered in the page."""
    context = browser.new_context()
    page = context.new_page()
    started = time.perf_counter()
    page.goto(f"{url}?threads={threads}")
    wait_ready(page)
    first = load_times(page, started)
    cached = []
    for _ in range(2):
        started = time.perf_counter()
        page.reload()
        wait_ready(page)
        cached.append(load_times(page, started))
    page.evaluate("r => window.tourGuide.answer(r)", requests[0])  # warm-up
    answers = [fastest([page.evaluate("r => window.tourGuide.answer(r)", r) for _ in range(repeats)],
                       lambda a: a["stats"]["total_ms"]) for r in requests]
    isolated = page.evaluate("crossOriginIsolated")
    context.close()
    return {"first_load": first, "cached_loads": cached, "answers": answers, "isolated": isolated}


def native_side(model: str, requests: list[dict], threads: int, repeats: int) -> dict:
    """The server's backend on the same GGUF: one llama.cpp context with `threads` threads."""
    from app.service import TourGuide, TourRequest
    from models.backends import open_backend

    started = time.perf_counter()
    backend = open_backend("llamacpp", model, threads=threads, parallel=1)
    load_s = time.perf_counter() - started
    guide = TourGuide(backend, TourGuide.coverage_for(model))
    queries = [guide.plan(TourRequest.parse(r)).query for r in requests]
    backend.complete(queries[0])  # warm-up
    answers = []
    for query in queries:
        tries = [backend.complete(query) for _ in range(repeats)]
        tries = [{"description": a.text, "raw": "".join(a.chunks), "stats": a.stats.to_dict()} for a in tries]
        answers.append(fastest(tries, lambda a: a["stats"]["total_s"]))
    backend.close()
    return {"load_s": load_s, "answers": answers}


def parting(native: str, steps: list) -> tuple[int, float] | None:
    """Where the browser's greedy tokens (`steps`: the two likeliest of each, as Runtime.trace gives
    them) leave the native answer's text, and the browser's margin there (its first choice's
    log-probability minus its second's); None when they never part. A step with no bytes is the
    end-of-turn token."""
    target, produced = native.encode("utf-8"), b""
    for i, top in enumerate(steps):
        piece = bytes(top[0]["bytes"])
        if (not piece and produced != target) or (piece and not target.startswith(produced + piece)):
            return i, top[0]["logprob"] - top[1]["logprob"]
        produced += piece
    return None if produced == target else (len(steps), math.inf)


def partings(url: str, browser, pairs: list[tuple[dict, str]]) -> list[tuple[int, float] | None]:
    """For each (request, native raw text): where the browser's greedy answer parts from it, and by how much."""
    if not pairs:
        return []
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    wait_ready(page)
    found = []
    for request, native in pairs:
        steps = page.evaluate("async r => (await window.tourGuide.runtime.trace(window.tourGuide.request(r).prompt))"
                              ".steps", request)
        found.append(parting(native, steps))
    context.close()
    return found


def native_first_margins(model: str, prompts: list[str], threads: int, batches=(512, 1)) -> dict[str, list[float]]:
    """llama.cpp's own margin between its two likeliest first tokens for each prompt, with the prompt
    read in one batch (as the server reads it) and a token at a time: how much the order of the sums
    alone moves it on this CPU."""
    import llama_cpp
    import numpy as np

    found = {}
    for batch in batches:
        llm = llama_cpp.Llama(model_path=model, n_ctx=1024, n_batch=batch, n_ubatch=batch, n_threads=threads,
                              logits_all=True, verbose=False)
        margins = []
        for prompt in prompts:
            llm.reset()
            llm.eval(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
            top = np.sort(np.asarray(llm.scores[llm.n_tokens - 1]))[-2:]
            margins.append(float(top[1] - top[0]))
        found[str(batch)] = margins
        llm.close()
    return found


def plus_code_agreement(url: str, browser, count: int = 50_000) -> dict:
    """Python's openlocationcode against npm's open-location-code and the page's own encoder
    (static/geo.js) on the same points: random ones, and ones given to 3 decimals (each on a cell's edge)."""
    import random

    from openlocationcode import openlocationcode as olc

    rng = random.Random(0)
    sets = {"random": [(rng.uniform(-90, 90), rng.uniform(-180, 180)) for _ in range(count)],
            "3 decimals": [(round(rng.uniform(-60, 60), 3), round(rng.uniform(-180, 180), 3)) for _ in range(count)]}
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    wait_ready(page)
    found = {}
    for name, points in sets.items():
        expected = [olc.encode(lat, lon, 10) for lat, lon in points]
        codes = page.evaluate("""async points => {
            const npm = (await import("./lib/open-location-code/openlocationcode.js")).default;
            const { plusCode } = await import("./geo.js");
            return [points.map(([a, b]) => npm.encode(a, b, 10)), points.map(([a, b]) => plusCode(a, b))];
        }""", points)
        found[name] = {"points": len(points), "npm_differs": sum(c != e for c, e in zip(codes[0], expected)),
                       "page_differs": sum(c != e for c, e in zip(codes[1], expected))}
    context.close()
    return found


def site_facts(site: Path, config: dict) -> dict:
    files = [p for p in site.rglob("*") if p.is_file()]

    def size(path: str) -> int:
        return (site / path).stat().st_size

    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "model_bytes": size(config["model"]["url"]),
            "wasm_bytes": size(config["runtime"]["wasm"]), "compat_wasm_bytes": size(config["runtime"]["compat_wasm"]),
            "gazetteer_bytes": size(config["gazetteer"]),
            "gazetteer_rows": len(json.loads((site / config["gazetteer"]).read_text()))}


def phone_screenshot(url: str, browser, path: Path) -> None:
    context = browser.new_context(**PHONE)
    page = context.new_page()
    page.goto(url + SHOT_LINK)
    wait_ready(page, "done")
    page.screenshot(path=str(path), full_page=True)
    context.close()


def pair_rows(browser_run: dict, native_run: dict, requests: list[dict]) -> list[dict]:
    rows = []
    for request, b, n in zip(requests, browser_run["answers"], native_run["answers"]):
        bs, ns = b["stats"], n["stats"]
        rows.append({"style": request["style"], "same": b["description"] == n["description"],
                     "browser_ttft_ms": bs["time_to_first_token_ms"], "native_ttft_ms": ns["time_to_first_token_s"] * 1000,
                     "browser_decode": bs["decode_tokens_per_s"], "native_decode": ns["tokens_per_s"],
                     "browser_tokens": bs["completion_tokens"], "native_tokens": ns["completion_tokens"],
                     "prompt_tokens": ns["prompt_tokens"], "browser_prompt_tokens": bs["prompt_tokens"],
                     "browser_prompt_ms": bs["prompt_ms"]})
    return rows


def run(threads: list[int], screenshot: Path | None, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    from app.offline.site import SiteConfig, build, default_model

    model = str(default_model())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        build(SiteConfig(model=model), site)
        config = json.loads((site / "config.json").read_text())
        requests = bench_requests(config["places"])
        with serve([sys.executable, "-m", "app.offline", "serve", str(site), "--port", "{port}"], "/config.json") as url, \
                sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            runs = []
            for t in threads:
                browser_run = browser_side(url + "/", requests, t, browser, repeats)
                native_run = native_side(model, requests, t, repeats)
                rows = pair_rows(browser_run, native_run, requests)
                parted = [i for i, row in enumerate(rows) if not row["same"]]
                found = partings(url + "/", browser, [(requests[i], native_run["answers"][i]["raw"]) for i in parted])
                at_first = [browser_run["answers"][i]["prompt"] for i, where in zip(parted, found) if where and where[0] == 0]
                runs.append({"threads": t, "browser": {k: v for k, v in browser_run.items() if k != "answers"},
                             "native_load_s": native_run["load_s"], "rows": rows, "partings": found,
                             "native_first_margins": native_first_margins(model, at_first, t)})
                print(f"threads {t}: browser first load {browser_run['first_load']['ready_ms'] / 1000:.1f} s, "
                      f"{sum(r['same'] for r in rows)}/{len(rows)} answers identical", flush=True)
            codes = plus_code_agreement(url + "/", browser)
            if screenshot:
                phone_screenshot(url + "/", browser, screenshot)
            version = browser.version
            browser.close()
        facts = site_facts(site, config)
    return {"model": Path(model).name, "model_bytes": Path(model).stat().st_size, "requests": requests,
            "repeats": repeats, "runs": runs,
            "site": facts, "plus_codes": codes,
            "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs", "chromium": version,
            "wllama": _npm_version("@wllama/wllama"), "load_average_before": load_before,
            "load_average_after": os.getloadavg()}


def _npm_version(package: str) -> str:
    return json.loads((ROOT / "app/web/node_modules" / package / "package.json").read_text())["version"]


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows if r[key] is not None)


def _best(rows: list[dict], key: str, pick) -> float:
    return pick(r[key] for r in rows if r[key] is not None)


def render(report: dict, screenshot: str | None) -> str:
    lines = ["# The offline app: the model in the browser against llama-cpp-python", "",
             f"Command: `{report['command']}`  ",
             f"Model `{report['model']}` ({report['model_bytes'] / 2**20:.1f} MiB); {report['machine']}; headless "
             f"chromium {report['chromium']}; wllama {report['wllama']} (llama.cpp in WebAssembly). Load average "
             f"(1, 5, 15 min) {', '.join(f'{x:.1f}' for x in report['load_average_before'])} before the run and "
             f"{', '.join(f'{x:.1f}' for x in report['load_average_after'])} after: other work shared the CPUs, so "
             "compare the two runtimes within a run (they take turns on the same requests), not with other files.", "",
             f"{len(report['requests'])} requests ({len(PLACES)} known places x {', '.join(s for s, _ in STYLES)}), greedy, "
             f"max 256 tokens, one warm-up first; each request answered {report.get('repeats', 1)} times on each side "
             "and the fastest kept. *TTFT*: request to first text, the prompt included (both runtimes "
             "keep the previous prompt's cache and read only what differs: the system message is shared). *decode*: "
             "tokens per second after the first (wllama's own `predicted_per_second`; llama-cpp-python's "
             "`GenerationStats.tokens_per_s`). *prompt*: the browser's prompt tokens read per second. Median over "
             "the requests, and in brackets the best one: on a shared machine the best is the nearer to what the "
             "runtime does alone.", "",
             "| threads | runtime | TTFT ms | decode tok/s | prompt tok/s | identical answers |",
             "|---:|---|---:|---:|---:|---:|"]
    for run in report["runs"]:
        rows, t = run["rows"], run["threads"]
        same = f"{sum(r['same'] for r in rows)} of {len(rows)}"
        rates = [r["browser_prompt_tokens"] / (r["browser_prompt_ms"] / 1000) for r in rows if r["browser_prompt_ms"]]
        lines.append(f"| {t} | browser (WASM{', threads on' if run['browser']['first_load']['multithread'] else ''}) | "
                     f"{_median(rows, 'browser_ttft_ms'):.0f} ({_best(rows, 'browser_ttft_ms', min):.0f}) | "
                     f"{_median(rows, 'browser_decode'):.1f} ({_best(rows, 'browser_decode', max):.1f}) | "
                     f"{statistics.median(rates):.0f} ({max(rates):.0f}) | {same} |")
        lines.append(f"| {t} | llama-cpp-python | {_median(rows, 'native_ttft_ms'):.0f} "
                     f"({_best(rows, 'native_ttft_ms', min):.0f}) | {_median(rows, 'native_decode'):.1f} "
                     f"({_best(rows, 'native_decode', max):.1f}) | - | |")
    lines += ["", "## Cold start", "",
              "*first load*: a fresh browser profile opens the page: the service worker fetches every file of the "
              "site from the local server into its cache, then the page reads the model from that cache into the "
              "WASM heap. *cached load*: the page reloaded (median of 2), everything from the cache. Times from the "
              "navigation's start.", "",
              "| threads | load | offline copy ready s | model read s | model into WASM s | ready s |",
              "|---:|---|---:|---:|---:|---:|"]
    for run in report["runs"]:
        b = run["browser"]
        cached = {k: statistics.median(c[k] for c in b["cached_loads"]) for k in
                  ("offline_ready_ms", "model_fetch_ms", "model_load_ms", "ready_ms")}
        for name, load in (("first", b["first_load"]), ("cached", cached)):
            lines.append(f"| {run['threads']} | {name} | {load['offline_ready_ms'] / 1000:.2f} | "
                         f"{load['model_fetch_ms'] / 1000:.2f} | {load['model_load_ms'] / 1000:.2f} | "
                         f"{load['ready_ms'] / 1000:.2f} |")
        lines.append(f"| {run['threads']} | llama-cpp-python: the model loaded in the process | | | | "
                     f"{run['native_load_s']:.2f} |")
    site, codes = report["site"], report["plus_codes"]
    lines += ["", "## The site", "",
              f"{site['files']} files, {site['bytes'] / 2**20:.1f} MiB: the model {site['model_bytes'] / 2**20:.1f} MiB, "
              f"wllama's wasm {site['wasm_bytes'] / 2**20:.1f} MiB, its compat build's {site['compat_wasm_bytes'] / 2**20:.1f} "
              f"MiB (fetched only by a browser that needs it), the gazetteer {site['gazetteer_bytes'] / 2**20:.1f} MiB "
              f"({site['gazetteer_rows']:,} localities a short code can name).", "",
              "Plus Codes against Python's openlocationcode (the server's), 10 digits:", "",
              "| points | npm open-location-code 1.0.3 differs | the page's encoder differs |", "|---|---:|---:|"]
    lines += [f"| {codes[n]['points']:,} {n} | {codes[n]['npm_differs']:,} | {codes[n]['page_differs']:,} |" for n in codes]
    lines += ["", *reading(report)]
    if screenshot:
        lines += ["", f"The page at a phone's size (390 x 844 CSS pixels, 2x), after `{SHOT_LINK}`:", "",
                  f"![the offline app on a phone-sized screen]({screenshot})", ""]
    return "\n".join(lines)


def reading(report: dict) -> list[str]:
    lines = ["## Reading", ""]
    for run in report["runs"]:
        rows = run["rows"]
        lines.append(f"- {run['threads']} thread{'s' if run['threads'] > 1 else ''}: the browser decodes at "
                     f"{_median(rows, 'browser_decode') / _median(rows, 'native_decode'):.2f}x llama-cpp-python's rate "
                     f"(best against best {_best(rows, 'browser_decode', max) / _best(rows, 'native_decode', max):.2f}x);"
                     f" time to the first token {_median(rows, 'browser_ttft_ms') / _median(rows, 'native_ttft_ms'):.1f}x"
                     f" (best {_best(rows, 'browser_ttft_ms', min) / _best(rows, 'native_ttft_ms', min):.1f}x).")
    found = [p for run in report["runs"] for p in run["partings"]]
    total = sum(len(run["rows"]) for run in report["runs"])
    if not found:
        lines.append(f"- All {total} greedy answers are identical word for word.")
        return lines
    at_first = sum(p is not None and p[0] == 0 for p in found)
    margins = [p[1] for p in found if p is not None]
    spread = ", ".join(f"{m:.3f}" for m in sorted({round(m, 3) for m in margins}))
    lines.append(f"- {total - len(found)} of {total} greedy answers are identical word for word. Of the {len(found)} "
                 f"others, {at_first} part at their first token; where they part, the browser's two likeliest tokens "
                 f"were {spread} nats apart: near ties. The corpus opens a description in a few set ways, which "
                 "the model learnt as near-equal first words, and WebAssembly's SIMD kernels sum in another order "
                 "than x86's. The test (tests/test_offline.py) allows a parting only at a margin under 0.25 nats.")
    shifts = [(b1, b512) for run in report["runs"] for b1, b512 in zip(run["native_first_margins"].get("1", []),
                                                                        run["native_first_margins"].get("512", []))]
    if shifts:
        moved = ", ".join(f"{m:.3f}" for m in sorted({round(abs(a - b), 3) for a, b in shifts}))
        lines.append(f"- llama.cpp alone, natively, on those first tokens: the margin between its two likeliest moves "
                     f"by {moved} nats when the prompt is read a token at a time instead of in one batch: the same "
                     "sums in another order.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.offline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, each run on both sides")
    parser.add_argument("--out", default=str(ROOT / "docs/results/offline.md"))
    parser.add_argument("--screenshot", default=str(ROOT / "docs/offline-phone.png"), help="'' for none")
    parser.add_argument("--repeats", type=int, default=2, help="answers per request and side; the fastest is kept")
    add_render_flag(parser)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    screenshot = Path(args.screenshot) if args.screenshot else None
    shot = os.path.relpath(screenshot, out.parent) if screenshot else None
    if rendered_again(args, out, lambda report: render(report, shot)):
        return 0
    if not Path(CHROMIUM).exists():
        return fail("Debian's chromium is needed (apt-get install chromium)")
    try:
        report = run([int(t) for t in args.threads.split(",")], screenshot, args.repeats)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return fail(exc)
    report["command"] = reproduce_command("bench.offline", argv if argv is not None else sys.argv[1:], out, "offline.md")
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1))
    write_atomic(out, render(report, shot))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
