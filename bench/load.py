"""The app as visitors meet it, through `python -m app` on loopback with the default model: right
facts on every known place (bench.facts), then concurrent clients; writes docs/results/app.md (+ .json).

    python -m bench.load --clients 1,4,16 --requests 64

For each concurrency level, `--requests` requests (bounded: each level also stops at
`--max-seconds`) spread over that many client threads, each request a pin dropped up to
`--pin-spread` metres from a random known place, with random interests and style. Reported:
p50 / p95 / max latency, requests per second, errors (any non-200 or broken body; the target is
zero). The server streams as many answers at once as its backend has contexts; beyond that,
requests queue, so latency grows with the queue while throughput stays that of those streams.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench import add_render_flag, chaos, facts, rendered_again, reproduce_command, start_server, stop
from core.artifacts import write_atomic
from data.geo import moved
from data.vocab import INTERESTS, STYLES

ROOT = Path(__file__).resolve().parent.parent


def bodies(url: str, count: int, seed: int, spread_m: float = 0.0) -> list[dict]:
    places = json.loads(urllib.request.urlopen(url + "/coverage").read())["places"]
    if not places:
        raise SystemExit("bench.load: the served model knows no places (no NAME.coverage.json beside it; "
                         "python -m app.coverage writes one)")
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        p = rng.choice(places)
        lat, lon = moved(p["latitude"], p["longitude"], rng.uniform(0, spread_m), rng.uniform(0, 360))
        out.append({"latitude": lat, "longitude": lon,
                    "interests": rng.sample(INTERESTS, rng.randint(1, 3)), "style": rng.choice(list(STYLES))})
    return out


def one(url: str, body: dict) -> tuple[float, str | None, int, int]:
    """(seconds, error or None, tokens, 503s) of one request, as a polite client makes it: a 503 (the
    server's line is full) is retried after its Retry-After, and the wait counts in the latency."""
    data = json.dumps(body).encode()
    start = time.perf_counter()
    refused = 0
    while True:
        request = urllib.request.Request(url + "/tour-guide", data=data, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read())
                error = None if answer.get("description") else "empty description"
                tokens = (answer.get("timings") or {}).get("completion_tokens") or 0
            return time.perf_counter() - start, error, tokens, refused
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or refused >= 20:
                return time.perf_counter() - start, f"HTTP {exc.code}", 0, refused
            refused += 1
            time.sleep(float(exc.headers.get("retry-after") or 1))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return time.perf_counter() - start, f"{type(exc).__name__}: {exc}", 0, refused


def run_level(url: str, clients: int, work: list[dict], max_seconds: float) -> dict:
    lock = threading.Lock()
    queue = list(work)
    results: list[tuple[float, str | None, int, int]] = []
    deadline = time.monotonic() + max_seconds

    def client():
        while time.monotonic() < deadline:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            outcome = one(url, body)
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    errors = [r[1] for r in results if r[1]]
    return {
        "clients": clients, "requests": len(results), "unsent": len(queue), "seconds": wall,
        "p50_s": statistics.median(latencies), "p95_s": latencies[max(0, int(round(0.95 * len(latencies))) - 1)],
        "max_s": latencies[-1], "requests_per_s": len(results) / wall,
        "tokens_per_s": sum(r[2] for r in results) / wall, "errors": len(errors), "error_samples": errors[:3],
        "refused_503": sum(r[3] for r in results),
    }


def render(report: dict) -> str:
    lines = ["# The app: right facts, and under load", "", f"Command: `{report['command']}`  ",
             f"Server: `python -m app` ({report['health']['backend']}, `{Path(report['health']['model']).name}`, "
             f"{report['health'].get('parallel', 1)} llama.cpp context(s) of {report['health'].get('threads')} "
             "thread(s)) on 127.0.0.1; clients are threads of the bench "
             f"process on the same {os.cpu_count()}-core machine, each sending its next request as soon as the last "
             "returns.", ""]
    if report.get("facts"):
        lines += facts.render(report["facts"])
    if report.get("unknown"):
        lines += facts.render_unknown(report["unknown"])
    if report["levels"]:
        lines += _load_section(report)
    if report.get("chaos"):
        lines += chaos.render(report["chaos"], report.get("chaos_baseline"))
    return "\n".join(lines)


def _load_section(report: dict) -> list[str]:
    lines = ["## Under load", "", f"Requests: a pin up to {report.get('pin_spread_m', 0):.0f} m from a random known "
              "place, 1-3 random interests, a random style; greedy.", "",
             "| clients | requests | errors | 503 then retried | p50 ms | p95 ms | max ms | requests/s | tokens/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["levels"]:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r.get('refused_503', 0)} | "
                     f"{r['p50_s'] * 1000:.0f} | "
                     f"{r['p95_s'] * 1000:.0f} | {r['max_s'] * 1000:.0f} | {r['requests_per_s']:.1f} | "
                     f"{r['tokens_per_s']:.0f} |")
    total_errors = sum(r["errors"] for r in report["levels"])
    unsent = sum(r["unsent"] for r in report["levels"])
    samples = [e for r in report["levels"] for e in r["error_samples"]][:3]
    lines += ["", f"Errors: {total_errors} in all" + (f" (for example: {samples})" if total_errors else "") + "."
              + (f" {unsent} requests were not sent before a level's time limit." if unsent else ""), "",
              _queueing(report["health"].get("parallel", 1)), ""]
    return lines


def _queueing(parallel: int) -> str:
    # A llama.cpp context is not thread-safe: each stream holds one for its whole length.
    return (f"The server streams {parallel} answer(s) at once (one per llama.cpp context); with more clients the "
            "rest wait for a free context in a bounded line, so latency grows with the clients beyond that while "
            f"requests/s stays about that of {parallel} stream(s). Past the line the server answers 503 with "
            "Retry-After at once; the bench's clients then wait that long and ask again, and the wait counts in "
            "their latency.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time limit per level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pin-spread", type=float, default=300.0, help="load pins up to this many metres from a place")
    parser.add_argument("--facts-styles", default="brief,stimulate,detailed",
                        help="styles every known place is asked in for the facts check ('' skips it)")
    parser.add_argument("--facts-limit", type=int, help="only the first N known places")
    parser.add_argument("--facts-interests", default="own", choices=facts.INTEREST_CHOICES,
                        help="own: each place's own interests; other: two it is not tagged with")
    parser.add_argument("--unknown-pins", type=int, default=120,
                        help="pins with no known place within 500 m asked of the model alone (0 skips the check)")
    parser.add_argument("--chaos-seconds", type=float, default=0.0,
                        help="run normal clients beside aborting ones for this long (0 skips), and as long alone before")
    parser.add_argument("--chaos-normal", type=int, default=2, help="normal clients in the chaos run")
    parser.add_argument("--chaos-aborting", type=int, default=6, help="aborting clients in the chaos run")
    parser.add_argument("--app-arg", action="append", default=[], help="passed to python -m app (e.g. --model=...)")
    parser.add_argument("--out", default=str(ROOT / "docs/results/app.md"))
    add_render_flag(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if rendered_again(args, out, render):
        return 0
    proc, url = start_server([sys.executable, "-m", "app", "--port", "{port}", *args.app_arg], "/health",
                             {"HF_HUB_OFFLINE": "1"})
    try:
        health = json.loads(urllib.request.urlopen(url + "/health").read())
        one(url, bodies(url, 1, args.seed + 99)[0])  # warm-up
        styles = tuple(s for s in args.facts_styles.split(",") if s)
        checked = facts.measure(url, styles, limit=args.facts_limit, seed=args.seed, progress=True,
                                interests=args.facts_interests, workers=health["contexts"]["total"]) if styles else None
        unknown = facts.check_unknown(health["model"], health["backend"], args.unknown_pins, args.seed,
                                      progress=True) if args.unknown_pins > 0 else None
        levels = []
        for clients in (int(c) for c in args.clients.split(",") if c):  # '' measures the facts alone
            work = bodies(url, args.requests, args.seed + clients, args.pin_spread)
            level = run_level(url, clients, work, args.max_seconds)
            print(f"{clients:3d} clients: {level['requests']} requests, {level['errors']} errors, "
                  f"p50 {level['p50_s'] * 1000:.0f} ms, p95 {level['p95_s'] * 1000:.0f} ms, "
                  f"{level['requests_per_s']:.1f} req/s", flush=True)
            levels.append(level)
        storm = baseline = None
        if args.chaos_seconds > 0:
            work = bodies(url, 64, args.seed + 7, args.pin_spread)
            baseline = chaos.run(url, work, args.chaos_normal, 0, args.chaos_seconds, args.seed)
            storm = chaos.run(url, work, args.chaos_normal, args.chaos_aborting, args.chaos_seconds, args.seed)
            print(f"chaos: {storm['aborts']} aborts, normal p95 {storm['p95_s'] * 1000:.0f} ms "
                  f"(alone {baseline['p95_s'] * 1000:.0f} ms), {storm['refused_503']} x 503, {storm['errors']} errors, "
                  f"{storm['contexts_leaked']} contexts leaked", flush=True)
        alive = proc.poll() is None
    finally:
        stop(proc)
    report = {"command": reproduce_command("bench.load", argv if argv is not None else sys.argv[1:], Path(args.out),
                                           "app.md"),
              "health": health, "facts": checked, "unknown": unknown, "pin_spread_m": args.pin_spread, "levels": levels,
              "chaos": storm, "chaos_baseline": baseline, "server_alive_after": alive}
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=2))
    write_atomic(out, render(report))
    print(f"wrote {out}")
    leaked = storm["contexts_leaked"] + storm["errors"] if storm else 0
    return 0 if alive and not leaked and not sum(level["errors"] for level in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
