"""The HTTP API (fixed: checks and clients rely on it).

    POST /tour-guide         {"latitude", "longitude" | "plus_code", "interests", "style", ["poi_id"]}
                             -> {"plus_code", "short_code", "locality", "latitude", "longitude",
                                 "nearby", "nearest", "answered_for", "lead", "notice",
                                 "description", "model", "backend", "timings"}
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
500 m, `nearby` is empty, `answered_for` and `lead` are null, and `notice` says the description is
not backed by facts, naming `nearest` and its distance. A model without a coverage file has
`nearby` empty and every one of those null.

Bad input is a 422 whose body names the field ({"error": "style: unknown style ...", "field":
"style"}), a `poi_id` that is not around the pin included; a body over 16 KB is refused before it
is parsed. Whatever a backend raises becomes a 500 (or an `error` event mid-stream); the server
keeps serving.
"""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.service import Plan, RequestError, TourGuide, TourRequest

MAX_BODY_BYTES = 16 * 1024
log = logging.getLogger("tour-guide")


def _reject(field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field, "message": message}, status_code=422)


async def _read_plan(request: Request, guide: TourGuide) -> Plan | JSONResponse:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _reject("body", f"over {MAX_BODY_BYTES // 1024} KB")
    raw = b""
    async for part in request.stream():  # a chunked body has no declared length: count as it comes
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            return _reject("body", f"over {MAX_BODY_BYTES // 1024} KB")
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
        return {"status": "ok", **guide.backend.describe(),
                "coverage": len(guide.coverage.places) if guide.coverage else None}

    @app.post("/tour-guide")
    async def tour_guide(request: Request):
        plan = await _read_plan(request, guide)
        if isinstance(plan, JSONResponse):
            return plan
        try:
            answer = await run_in_threadpool(guide.answer, plan)
        except Exception as exc:  # a backend failure must not take the server down
            log.exception("generation failed")
            return JSONResponse({"error": f"generation failed: {exc}"}, status_code=500)
        return JSONResponse(_clean(answer))

    @app.post("/tour-guide/stream")
    async def tour_guide_stream(request: Request):
        plan = await _read_plan(request, guide)
        if isinstance(plan, JSONResponse):
            return plan

        def events():
            try:
                for kind, payload in guide.stream(plan):
                    yield _sse(kind, _clean(payload))
            except Exception as exc:
                log.exception("generation failed mid-stream")
                yield _sse("error", {"error": f"generation failed: {exc}"})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    return app
