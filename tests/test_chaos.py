"""The server survives what visitors do. A real server on 127.0.0.1, real llama.cpp on the demo
GGUF, two contexts; visitors who leave mid-answer in storms, read slowly, send their body slowly,
use the page and the API at once, and a model that fails mid-answer. After each: a normal request
answers within a bound and /health shows every context free.

The demo model writes ~3,000 tokens/s, faster than a visitor can leave, so these backends wait
10 ms between tokens (still llama.cpp underneath): an answer then takes ~1-2 s, long enough to be
cut anywhere.
"""

import json
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import uvicorn

from app.coverage import Coverage
from app.jobs import ServingConfig
from app.page import Guides
from app.server import create_app
from app.service import TourGuide
from bench import start_server, stop
from models.backends.llamacpp_runtime import LlamaCppBackend

DEMO = Path(__file__).resolve().parent.parent / "models" / "tour-guide-demo.gguf"
TOKEN_DELAY_S = 0.01
SERVING = ServingConfig(max_queue=4, queue_wait_s=1.5, answer_deadline_s=8.0, body_timeout_s=1.0)
OPERA = {"latitude": -33.8568, "longitude": 151.2153, "interests": ["architecture", "history"], "style": "detailed"}
FAILING = {**OPERA, "interests": ["food"]}  # the failing backend breaks on requests about food


class PacedLlama(LlamaCppBackend):
    """llama.cpp at a visitor's pace; `fail_after` tokens into a request about food, it raises."""

    fail_after: int | None = None

    def _generate(self, messages, options, state):
        about_food = "food" in messages[-1]["content"]
        for count, piece in enumerate(super()._generate(messages, options, state)):
            if self.fail_after is not None and about_food and count == self.fail_after:
                raise RuntimeError("the model broke down mid-answer")
            time.sleep(TOKEN_DELAY_S)
            yield piece


class Live:
    def __init__(self, url: str, guide: TourGuide):
        self.url, self.guide = url, guide
        self.port = int(url.rsplit(":", 1)[1])

    def health(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/health", timeout=5).read())

    def post(self, path: str, body: dict, timeout: float = 30):
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), method="POST",
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def settled(self, within_s: float = 3.0) -> dict:
        """/health once every context is free and nobody waits (fails after `within_s`)."""
        deadline = time.monotonic() + within_s
        while True:
            health = self.health()
            if health["contexts"]["free"] == health["contexts"]["total"] and health["queue"] == 0:
                return health
            assert time.monotonic() < deadline, f"contexts still held {within_s} s later: {health}"
            time.sleep(0.05)

    def answers_normally(self, bound_s: float = 8.0) -> None:
        began = time.monotonic()
        status, _, body = self.post("/tour-guide", OPERA, timeout=bound_s)
        assert status == 200 and "Opera House" in json.loads(body)["lead"]
        assert time.monotonic() - began < bound_s
        health = self.settled()
        assert health["status"] == "ok"


def serve(guide: TourGuide):
    label = "demo (llamacpp)"
    guides = Guides({label: ("llamacpp", str(DEMO), {})}, serving=guide.serving)
    guides.loaded[label] = guide
    server = uvicorn.Server(uvicorn.Config(create_app(guides), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, Live(f"http://127.0.0.1:{port}", guide)


@pytest.fixture(scope="module")
def live():
    backend = PacedLlama(str(DEMO), parallel=2, threads=1)
    backend.fail_after = 5
    guide = TourGuide(backend, TourGuide.coverage_for(str(DEMO)), serving=SERVING)
    server, thread, live = serve(guide)
    yield live
    server.should_exit = True
    thread.join(timeout=10)
    backend.close()


def raw_request(port: int, path: str, body: dict, cut_after_s: float | None, send_body: bool = True) -> bytes:
    """An HTTP request on a bare socket, hung up `cut_after_s` after it was sent (None: read to the end)."""
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head + (payload if send_body else payload[: len(payload) // 2]))
        ends = None if cut_after_s is None else time.monotonic() + cut_after_s
        while ends is None or time.monotonic() < ends:
            sock.settimeout(0.02 if ends else 15)
            try:
                part = sock.recv(4096)
            except TimeoutError:
                continue
            if not part:
                break
            received += part
    return received


def test_abort_storms_of_three_times_the_contexts_leave_every_context_free(live):
    rng = random.Random(0)
    before = live.health()["answers"].get("cancelled", 0)
    for _storm in range(3):
        threads = [threading.Thread(target=raw_request, args=(live.port, rng.choice(["/tour-guide/stream", "/tour-guide"]),
                                                              OPERA, rng.uniform(0.0, 0.6), rng.random() > 0.15))
                   for _ in range(12)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Answers nobody reads end within a few tokens: the contexts are free long before an
        # uncut answer (~2 s of paced tokens) would have ended.
        live.settled(within_s=1.0)
        assert time.monotonic() - began < 3.0
        live.answers_normally()
    assert live.health()["answers"]["cancelled"] > before


def test_a_plain_post_whose_client_leaves_stops_its_answer(live):
    before = live.health()["answers"].get("cancelled", 0)
    raw_request(live.port, "/tour-guide", OPERA, cut_after_s=0.3)
    live.settled(within_s=0.5)
    assert live.health()["answers"]["cancelled"] == before + 1


def test_clients_who_leave_while_waiting_in_line_give_their_place_back(live):
    busy = [threading.Thread(target=live.post, args=("/tour-guide", OPERA)) for _ in range(2)]
    for t in busy:
        t.start()
    while live.health()["contexts"]["busy"] < 2:
        time.sleep(0.01)
    leavers = [threading.Thread(target=raw_request, args=(live.port, "/tour-guide", OPERA, 0.2))
               for _ in range(SERVING.max_queue)]  # the whole line, then gone
    for t in leavers:
        t.start()
    for t in leavers:
        t.join()
    time.sleep(0.1)
    assert live.health()["queue"] == 0  # nobody waits for them: the line is free for the next visitor
    status, _, _ = live.post("/tour-guide", OPERA)
    assert status == 200
    for t in busy:
        t.join()
    live.settled()


def test_a_slow_reader_holds_no_context_once_its_answer_is_written(live):
    whole = {}

    def read_slowly():
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
            payload = json.dumps(OPERA).encode()
            sock.sendall(f"POST /tour-guide/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            data = b""
            while part := sock.recv(64):
                data += part
                time.sleep(0.01)
            whole["body"] = data

    reader = threading.Thread(target=read_slowly)
    reader.start()
    live.settled(within_s=6.0)  # the answer is written: its context is back while the reader reads on
    assert reader.is_alive()
    live.answers_normally()
    reader.join(timeout=60)
    events = whole["body"].decode().split("\r\n\r\n", 1)[1]
    assert "event: done" in events


def test_a_client_that_sends_its_body_slowly_gets_408_and_holds_nothing(live):
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        payload = json.dumps(OPERA).encode()
        sock.sendall(f"POST /tour-guide HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload[:10])
        assert live.health()["contexts"]["busy"] == 0
        began = time.monotonic()
        reply = sock.recv(4096)
        while len(reply) < 20 and (part := sock.recv(4096)):
            reply += part
    assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - began < SERVING.body_timeout_s + 1
    live.answers_normally()


def test_overload_gets_503_with_retry_after_and_never_waits_for_ever(live):
    results = []

    def ask():
        began = time.monotonic()
        status, headers, _ = live.post("/tour-guide", OPERA)
        results.append((status, headers.get("retry-after"), time.monotonic() - began))

    threads = [threading.Thread(target=ask) for _ in range(12)]  # 2 contexts, a line of 4
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r for r in results if r[0] == 503]
    assert len([r for r in results if r[0] == 200]) >= 2 and refused
    assert all(r[1] and int(r[1]) >= 1 for r in refused)
    # Past the line: refused at once; in the line: refused by the bounded wait, never later.
    assert min(r[2] for r in refused) < 0.5
    assert max(r[2] for r in refused) < SERVING.queue_wait_s + 1.0
    live.settled()
    live.answers_normally()


def test_a_backend_that_raises_mid_stream_ends_that_answer_only(live):
    status, _, body = live.post("/tour-guide/stream", FAILING)
    assert status == 200 and b"event: error" in body and b"broke down" in body
    status, _, body = live.post("/tour-guide", FAILING)
    assert status == 500 and b"broke down" in body
    assert live.settled()["answers"]["error"] >= 2
    live.answers_normally()


def test_the_page_and_the_api_at_once_and_a_page_visitor_who_leaves(live):
    from gradio_client import Client

    client = Client(live.url + "/", verbose=False)
    args = dict(location="-33.8568, 151.2153", interests=["architecture", "history"], style="detailed",
                label="demo (llamacpp)", poi_id=None, temperature=0.0, top_p=1.0, max_tokens=256)
    page_job = client.submit(*args.values(), api_name="/describe")
    api = [threading.Thread(target=live.post, args=("/tour-guide/stream", OPERA)) for _ in range(3)]
    for t in api:
        t.start()
    text, _ = page_job.result(timeout=30)
    for t in api:
        t.join()
    assert "Opera House" in text
    live.settled()
    before = live.health()["answers"].get("cancelled", 0)
    leaving = client.submit(*args.values(), api_name="/describe")
    time.sleep(0.5)
    leaving.cancel()  # the visitor closed the tab mid-answer
    live.settled(within_s=2.0)
    assert live.health()["answers"]["cancelled"] == before + 1
    live.answers_normally()
    client.close()


def test_an_answer_that_outlives_its_deadline_ends_there():
    backend = PacedLlama(str(DEMO), parallel=1, threads=1)
    guide = TourGuide(backend, TourGuide.coverage_for(str(DEMO)),
                      serving=ServingConfig(answer_deadline_s=0.3, queue_wait_s=1.0))
    server, thread, live = serve(guide)
    try:
        began = time.monotonic()
        status, _, body = live.post("/tour-guide", OPERA)
        answer = json.loads(body)
        assert status == 200 and answer["timings"]["finish_reason"] == "time"
        assert time.monotonic() - began < 2.0 and answer["description"]
        assert live.settled()["answers"] == {"time": 1}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        backend.close()


def test_health_says_degraded_when_a_context_is_held_longer_than_any_answer_can_take():
    backend = PacedLlama(str(DEMO), parallel=2, threads=1)
    guide = TourGuide(backend, Coverage([]), serving=ServingConfig(answer_deadline_s=0.1))
    try:
        lost = backend.pool.acquire()
        lost.since -= guide.serving.stale_after_s + 1  # as if an answer had leaked it long ago
        health = guide.health()
        assert health["status"] == "degraded" and health["contexts"] == {"total": 2, "free": 1, "busy": 1}
        lost.release()
        assert guide.health()["status"] == "ok"
    finally:
        backend.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_answers_in_flight_and_exits_0(sig):
    """`python -m app` on the shipped model, two answers streaming and one waiting: SIGTERM (or
    Ctrl-C) ends them all within the grace and the process exits 0."""
    model = DEMO.with_name("tour-guide.gguf")
    proc, url = start_server([sys.executable, "-m", "app", "--model", str(model), "--port", "{port}", "--parallel", "2",
                              "--shutdown-grace-s", "2"], "/health")
    live = Live(url, guide=None)
    try:
        streams = [threading.Thread(target=raw_request, args=(live.port, "/tour-guide/stream", OPERA, None))
                   for _ in range(3)]
        for t in streams:
            t.start()
        deadline = time.monotonic() + 10
        while live.health()["contexts"]["busy"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        began = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - began < 5.0
        for t in streams:
            t.join(timeout=5)
            assert not t.is_alive()
    finally:
        stop(proc)
