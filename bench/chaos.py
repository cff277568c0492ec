"""Visitors who leave, beside visitors who stay: for a fixed time, normal clients ask and read their
answers while aborting clients open a stream (or a plain POST) and hang up at a random moment.
What the normal clients see (p50, p95, errors, 503s) and whether the server lost any context
(every context must be free once the storm is over) go in docs/results/app.md.

    python -m bench.load --clients '' --facts-styles '' --unknown-pins 0 --chaos-seconds 60
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request

PATHS = ("/tour-guide/stream", "/tour-guide")


def hang_up(port: int, body: dict, path: str, after_s: float) -> None:
    """A request on a bare socket, read for `after_s`, then the connection closed mid-answer."""
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + payload)
        ends = time.monotonic() + after_s
        while (left := ends - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                if not sock.recv(4096):
                    return
            except TimeoutError:
                return


def ask(url: str, body: dict) -> tuple[float, str]:
    """(seconds, outcome) of one normal request: "ok", "503" or an error's description."""
    request = urllib.request.Request(url + "/tour-guide", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            outcome = "ok" if json.loads(response.read()).get("description") else "empty description"
    except urllib.error.HTTPError as exc:
        outcome = "503" if exc.code == 503 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - start, outcome


def health(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())


def settle(url: str, within_s: float) -> tuple[dict, float]:
    """/health once every context is free (or as it is after `within_s`), and how long that took."""
    start = time.monotonic()
    while True:
        now = health(url)
        if now["contexts"]["free"] == now["contexts"]["total"] and now["queue"] == 0:
            return now, time.monotonic() - start
        if time.monotonic() - start > within_s:
            return now, time.monotonic() - start
        time.sleep(0.1)


def run(url: str, bodies: list[dict], normal: int, aborting: int, seconds: float, seed: int,
        max_abort_s: float = 1.5) -> dict:
    """`normal` clients asking one request after another, `aborting` clients each opening a request
    and hanging up within `max_abort_s`, for `seconds`; then the server's contexts."""
    port = int(url.rsplit(":", 1)[1])
    rng = random.Random(seed)
    lock = threading.Lock()
    asked: list[tuple[float, str]] = []
    aborts = [0]
    deadline = time.monotonic() + seconds

    def normal_client():
        while time.monotonic() < deadline:
            with lock:
                body = rng.choice(bodies)
            result = ask(url, body)
            with lock:
                asked.append(result)

    def aborting_client():
        while time.monotonic() < deadline:
            with lock:
                body, path, after = rng.choice(bodies), rng.choice(PATHS), rng.uniform(0.0, max_abort_s)
                aborts[0] += 1
            with contextlib.suppress(OSError):  # the server closed first: fine for a client that was leaving
                hang_up(port, body, path, after)

    threads = [threading.Thread(target=normal_client) for _ in range(normal)]
    threads += [threading.Thread(target=aborting_client) for _ in range(aborting)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after, settle_s = settle(url, within_s=30.0)
    ok = sorted(s for s, outcome in asked if outcome == "ok")
    errors = [outcome for _, outcome in asked if outcome not in ("ok", "503")]
    return {"seconds": seconds, "normal_clients": normal, "aborting_clients": aborting, "aborts": aborts[0],
            "answered": len(ok), "refused_503": sum(outcome == "503" for _, outcome in asked),
            "errors": len(errors), "error_samples": errors[:3],
            "p50_s": statistics.median(ok) if ok else None,
            "p95_s": ok[max(0, int(round(0.95 * len(ok))) - 1)] if ok else None,
            "contexts_leaked": after["contexts"]["total"] - after["contexts"]["free"], "settled_in_s": settle_s,
            "health_after": after}


def render(chaos: dict, clean: dict | None) -> list[str]:
    lines = ["## Visitors who leave mid-answer", "",
             f"For {chaos['seconds']:.0f} s, {chaos['normal_clients']} normal client(s) asked one request after "
             f"another (a plain POST, read to the end) while {chaos['aborting_clients']} aborting client(s) opened "
             "a stream or a plain POST and hung up at a random moment within 1.5 s, "
             f"{chaos['aborts']} times in all.", "",
             "| | answered | p50 ms | p95 ms | 503 | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name, run_ in (("normal clients, others aborting", chaos), ("normal clients alone", clean)):
        if run_:
            lines.append(f"| {name} | {run_['answered']} | {run_['p50_s'] * 1000:.0f} | {run_['p95_s'] * 1000:.0f} | "
                         f"{run_['refused_503']} | {run_['errors']} |")
    after = chaos["health_after"]
    lines += ["", f"Contexts leaked after the storm: **{chaos['contexts_leaked']}** of {after['contexts']['total']} "
              f"(all free {chaos['settled_in_s']:.1f} s after the last client; /health then said "
              f"`{after['status']}`; answers since the server started, by how they ended: "
              f"{json.dumps(after.get('answers', {}))}).", ""]
    return lines
