"""The HTTP API (fixed: checks and clients rely on it).

    POST /tour-guide         {"latitude", "longitude" | "plus_code", "interests", "style", ["poi_id"]}
                             -> {"plus_code", "short_code", "locality", "latitude", "longitude",
                                 "nearby", "nearest", "answered_for", "lead", "notice",
                                 "description", "withheld", "model", "backend", "timings"}
    POST /tour-guide/stream  the same as server-sent events: `place` (all but description and
                             timings), `token` per piece, `done` (the whole answer)
    GET  /health             the loaded model and backend
    GET  /coverage           the places the model knows

Around me: `nearby` lists the known places within 500 m of the pin (app.coverage.AROUND_M),
nearest first, each {"poi_id", "name", "latitude", "longitude", "plus_code", "short_code",
"locality", "distance_m", "bearing_deg", "direction"} with the distance and the compass direction
("north-east") from the pin to the place. The answer is for the nearest of them, or for the one
named by `poi_id`: `answered_for` (the same shape) and `lead`, the line a client shows before the
model's `description` ("Sydney Opera House, about 150 m north-east of you:"). With nothing within
500 m, `nearby` is empty, `answered_for` and `lead` are null, `notice` says the model knows no
place there, naming `nearest` and its distance (great-circle), and the description is the model's
own answer only when that is a plain refusal: anything else would be invented, so it is withheld
(`description` empty, `withheld` says why; `python -m app --show-unbacked` shows it anyway) and,
on the stream, no token of it is sent. A model without a coverage file has
`nearby` empty and every one of those null.

Bad input is a 422 whose body names the field ({"error": "style: unknown style ...", "field":
"style"}), a `poi_id` that is not around the pin included; a body over 16 KB is refused before it
is parsed, one that takes longer than `body_timeout_s` to arrive gets 408. Whatever a backend
raises becomes a 500 (or an `error` event mid-stream); the server keeps serving.

Sharing the model (app.jobs.ServingConfig): a request waits for a free llama.cpp context at most
`queue_wait_s`, behind at most `max_queue` others, else 503 with Retry-After (before any byte of
the answer); every answer ends by `answer_deadline_s`; a client that disconnects, from the stream
or from a plain POST, ends its answer within a token and gives its context back. /health says
`ok`, `degraded` (a context held longer than any answer can take) or `stopping`, with the contexts
free and busy, the queue, and the age of the oldest request in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.jobs import Job
from app.service import Plan, RequestError, TourGuide, TourRequest
from models.backends.pool import Busy

MAX_BODY_BYTES = 16 * 1024
log = logging.getLogger("tour-guide")


def _reject(field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field, "message": message}, status_code=422)


async def _read_body(request: Request) -> bytes | JSONResponse:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _reject("body", f"over {MAX_BODY_BYTES // 1024} KB")
    raw = b""
    async for part in request.stream():  # a chunked body has no declared length: count as it comes
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            return _reject("body", f"over {MAX_BODY_BYTES // 1024} KB")
    return raw


async def _read_plan(request: Request, guide: TourGuide) -> Plan | Response:
    try:  # a client trickling its body holds no context, but it must not hold a connection for ever
        raw = await asyncio.wait_for(_read_body(request), guide.serving.body_timeout_s)
    except TimeoutError:
        return JSONResponse({"error": f"body: not received within {guide.serving.body_timeout_s:g} s",
                             "field": "body"}, status_code=408)
    except ClientDisconnect:
        return Response(status_code=499)  # gone before its question was complete
    if isinstance(raw, Response):
        return raw
    try:
        # Python's json reads NaN and Infinity; they are refused by field below, not as bad JSON.
        body = json.loads(raw or b"null")
    except ValueError as exc:
        return _reject("body", f"not valid JSON ({exc})")
    try:
        return guide.plan(TourRequest.parse(body))  # a poi_id not around the pin is bad input too
    except RequestError as exc:
        return _reject(exc.field, exc.message)


def _sse(event: str, payload: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, allow_nan=False)}\n\n".encode()


def _busy(exc: Busy) -> JSONResponse:
    return JSONResponse({"error": f"busy: {exc}", "retry_after_s": exc.retry_after_s}, status_code=503,
                        headers={"retry-after": str(exc.retry_after_s)})


async def _start(guide: TourGuide, plan: Plan, request: Request) -> Job | Response:
    """The answer begun in a context of its own, or 503 while no byte of it has been sent. A client
    that hangs up while it waits in line leaves the line: it would take a context for nobody."""
    abandoned = threading.Event()
    watch = asyncio.ensure_future(_until_disconnect(request))
    watch.add_done_callback(lambda task: task.cancelled() or guide.abandon(abandoned))
    try:
        return await run_in_threadpool(guide.start, plan, None, abandoned)  # waits at most queue_wait_s
    except Busy as exc:
        return Response(status_code=499) if abandoned.is_set() else _busy(exc)
    finally:
        watch.cancel()


async def _accept(request: Request, guide: TourGuide) -> Job | Response:
    """The request read and its answer begun, or the response that refuses it (bad input, busy)."""
    plan = await _read_plan(request, guide)
    if isinstance(plan, Response):
        return plan
    return await _start(guide, plan, request)


async def _until_disconnect(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _final(job: Job) -> tuple[str, dict]:
    async for kind, payload in job.aevents():
        if kind in ("done", "error"):
            return kind, payload
    return "error", {"error": "the stream ended without an answer"}


class JobStream(StreamingResponse):
    """Server-sent events of a job. However the response ends (the last event, a client that left,
    a server that stops), the job is told: an answer nobody reads stops within a token."""

    def __init__(self, job: Job):
        async def events():
            async for kind, payload in job.aevents():
                yield _sse(kind, _clean(payload))

        super().__init__(events(), media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


def _clean(payload):
    """JSON without NaN/inf (a rate of a one-token answer is None, never NaN)."""
    if isinstance(payload, float) and not math.isfinite(payload):
        return None
    if isinstance(payload, dict):
        return {k: _clean(v) for k, v in payload.items()}
    if isinstance(payload, list):
        return [_clean(v) for v in payload]
    return payload


def create_api(guide: TourGuide, app: FastAPI | None = None) -> FastAPI:
    """Add the tour-guide routes to `app` (a new FastAPI app by default)."""
    app = app or FastAPI(title="Offline Tour Guide", description=__doc__.split("\n\n")[0])

    @app.get("/health")
    def health() -> dict:
        return {**guide.health(), **guide.backend.describe(),
                "coverage": len(guide.coverage.places) if guide.coverage else None}

    @app.post("/tour-guide")
    async def tour_guide(request: Request):
        job = await _accept(request, guide)
        if isinstance(job, Response):
            return job
        answer, gone = asyncio.ensure_future(_final(job)), asyncio.ensure_future(_until_disconnect(request))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not answer.done():  # the client left (or the server stops): end the answer now
                job.cancel()
                answer.cancel()
        if not answer.done() or answer.cancelled():
            return Response(status_code=499)  # nobody is there to read it
        kind, payload = answer.result()
        if kind == "error":
            log.error("generation failed: %s", payload["error"])
            return JSONResponse(payload, status_code=500)
        return JSONResponse(_clean(payload))

    @app.post("/tour-guide/stream")
    async def tour_guide_stream(request: Request):
        job = await _accept(request, guide)
        return job if isinstance(job, Response) else JobStream(job)

    return app
