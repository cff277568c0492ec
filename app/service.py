"""The tour guide behind the page and the HTTP API: a request (a pin or a Plus Code, interests, a
style, optionally one of the places around it) becomes a place, the known places around it, a
prompt for the loaded model, and a streamed description with its timings, led by a line saying
which place it is about and where that is from the pin, or an honest notice that nothing the
model learnt is near."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

from app.coverage import AROUND_M, Coverage, Nearby
from app.jobs import Job, ServingConfig
from data.coverage import coverage_file_for
from data.geo import GeoError, Place, check_coordinates, encode, parse
from data.prompt import TourQuery
from data.refusal import refusal_problems
from data.validate import PlaceNames
from data.vocab import check_interests, check_style
from models.backends import Backend, GenerationOptions
from models.backends.pool import Busy, Lease


class RequestError(ValueError):
    """Bad input, with the name of the field it is about."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_place(body: dict) -> Place:
    """The place of a request: `plus_code` (or whatever a person types: a code or "lat, lon"), or
    `latitude` and `longitude`; each problem named by its field."""
    has_code = body.get("plus_code") not in (None, "")
    has_point = body.get("latitude") is not None or body.get("longitude") is not None
    if has_code and has_point:
        raise RequestError("plus_code", "give a Plus Code or coordinates, not both")
    if has_code:
        if not isinstance(body["plus_code"], str):
            raise RequestError("plus_code", "must be a string such as '46V8+74 Sydney'")
        try:
            place = parse(body["plus_code"])
        except GeoError as exc:
            raise RequestError("plus_code", str(exc)) from None
    elif has_point:
        for name in ("latitude", "longitude"):
            value = body.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(name, "must be a number")
            if not math.isfinite(value):
                raise RequestError(name, "must be finite (not NaN or infinite)")
        try:
            lat, lon = check_coordinates(body["latitude"], body["longitude"])
        except GeoError as exc:
            field = "latitude" if "latitude" in str(exc) else "longitude"
            raise RequestError(field, str(exc)) from None
        place = encode(lat, lon)
    else:
        raise RequestError("latitude", "give latitude and longitude, or plus_code")
    return place


@dataclass(frozen=True)
class TourRequest:
    place: Place
    interests: tuple[str, ...]
    style: str
    poi_id: str | None = None  # one of the places around the pin to answer for; None: the nearest

    @classmethod
    def parse(cls, body: dict) -> TourRequest:
        """From the API's JSON: coordinates or a Plus Code, interests, style; each problem named."""
        if not isinstance(body, dict):
            raise RequestError("body", "expected a JSON object")
        unknown = sorted(set(body) - {"latitude", "longitude", "plus_code", "interests", "style", "poi_id"})
        if unknown:
            raise RequestError(unknown[0], "unknown field")
        place = parse_place(body)
        interests = body.get("interests")
        if not isinstance(interests, list) or not all(isinstance(i, str) for i in interests):
            raise RequestError("interests", "must be a list of strings")
        if not interests:
            raise RequestError("interests", "choose at least one interest")
        try:
            interests = check_interests(interests)
        except ValueError as exc:
            raise RequestError("interests", str(exc)) from None
        style = body.get("style")
        if not isinstance(style, str):
            raise RequestError("style", "must be a string")
        try:
            check_style(style)
        except ValueError as exc:
            raise RequestError("style", str(exc)) from None
        poi_id = body.get("poi_id")
        if poi_id is not None and (not isinstance(poi_id, str) or not poi_id.strip()):
            raise RequestError("poi_id", "must be the poi_id of a place in `nearby`, e.g. 'sydney-opera-house'")
        return cls(place, tuple(interests), style, poi_id)

    @property
    def query(self) -> TourQuery:
        return TourQuery(self.place.plus_code, self.place.short_code, self.place.locality, self.interests, self.style)


def lead_line(chosen: Nearby) -> str:
    """What the person reads before the model's text: which place it is about, and where that is
    from where they stand ("Sydney Opera House, about 150 m north-east of you:")."""
    if chosen.distance_m < 20:  # within a cell or so of the pin: a direction would be noise
        return f"{chosen.place.name}, right where you are:"
    return f"{chosen.place.name}, about {round(chosen.distance_m, -1):.0f} m {chosen.direction} of you:"


def _how_far(metres: float) -> str:
    if metres >= 100_000:
        return f"{metres / 1000:,.0f} km"
    return f"{metres / 1000:.1f} km" if metres >= 1000 else f"{round(metres, -1):.0f} m"


def far_notice(nearest: Nearby | None) -> str:
    where = f" (the nearest is {nearest.place.name}, {_how_far(nearest.distance_m)} away)" if nearest else ""
    return f"This model knows no place within {AROUND_M:.0f} m of this spot{where}."


# What stands in for a far pin's answer that is not a plain refusal (unless ServingConfig.show_unbacked).
WITHHELD = ("The model's answer is not shown: it described this spot, and no fact it learnt is about a place "
            "here, so it would be invented.")


@dataclass(frozen=True)
class Plan:
    """What a request becomes before the model runs: the response's header and the model's query."""

    header: dict
    query: TourQuery


class TourGuide:
    """One loaded backend, what the model covers, and the answers in flight."""

    def __init__(self, backend: Backend, coverage: Coverage | None = None,
                 options: GenerationOptions = GenerationOptions(), serving: ServingConfig = ServingConfig()):
        self.backend = backend
        self.coverage = coverage
        self.serving = serving
        self.options = options
        backend.pool.max_waiting = serving.max_queue
        self._jobs: set[Job] = set()
        self._jobs_lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()  # answers ended, by how: stop, length, time, cancelled, error
        self._names = PlaceNames(coverage.places if coverage else [])  # what a refusal must not name
        self.stopping = False

    @classmethod
    def coverage_for(cls, model: str) -> Coverage | None:
        """The coverage file shipped next to a model (`NAME.coverage.json`), if any."""
        candidate = coverage_file_for(model)
        return Coverage.load(candidate) if candidate.is_file() else None

    def _choose(self, around: list[Nearby], poi_id: str | None) -> Nearby | None:
        """The place to answer for: the one asked for, which must be around the pin, or the nearest."""
        if poi_id is None:
            return around[0] if around else None
        if self.coverage is None:
            raise RequestError("poi_id", "this model ships no list of known places to choose from")
        chosen = next((n for n in around if n.place.poi_id == poi_id), None)
        if chosen is None:
            known = self.coverage.find(poi_id)
            why = "is not a place this model knows" if known is None else f"is not within {AROUND_M:.0f} m of this spot"
            raise RequestError("poi_id", f"{poi_id!r} {why}; choose one of `nearby`")
        return chosen

    def header(self, place: Place, poi_id: str | None = None) -> dict:
        """What the response says about the place: its codes, the known places around it, which one
        it is answered for and the line that says so, or a notice that nothing it learnt is near."""
        header = {"plus_code": place.plus_code, "short_code": place.short_code, "locality": place.locality,
                  "latitude": place.latitude, "longitude": place.longitude, "nearby": [], "nearest": None,
                  "answered_for": None, "lead": None, "notice": None, "model": self.backend.model,
                  "backend": self.backend.kind}
        around = self.coverage.around(place) if self.coverage else []
        chosen = self._choose(around, poi_id)
        if self.coverage is None:
            return header
        nearest = around[0] if around else self.coverage.nearest(place)
        header["nearby"] = [n.to_json() for n in around]
        header["nearest"] = nearest.to_json() if nearest else None
        if chosen is None:
            header["notice"] = far_notice(nearest)
        else:
            header["answered_for"] = chosen.to_json()
            header["lead"] = lead_line(chosen)
        return header

    def plan(self, request: TourRequest) -> Plan:
        """The header and the query. The model is asked about the chosen place's own cell, as it was
        trained, never the pin's (a cell it never saw would only make it guess); far from every known
        place it is asked about the pin's cell, under the notice."""
        header = self.header(request.place, request.poi_id)
        chosen = header["answered_for"]
        if chosen is None:
            return Plan(header, request.query)
        return Plan(header, TourQuery(chosen["plus_code"], chosen["short_code"], chosen["locality"],
                                      request.interests, request.style))

    def _options(self, options: GenerationOptions | None) -> GenerationOptions:
        """Every answer has a deadline beside max_tokens, unless the caller set its own."""
        options = options or self.options
        return options if options.max_seconds else replace(options, max_seconds=self.serving.answer_deadline_s)

    def stream(self, plan: Plan, options: GenerationOptions | None = None, cancel: threading.Event | None = None,
               lease: Lease | None = None) -> Iterator[tuple[str, dict]]:
        """("place", header), then ("token", {"text"}) per piece, then ("done", full answer). Runs in
        the caller's thread at the caller's pace: a server uses `start` instead.

        Far from every known place, the answer is held back until it is whole: a plain refusal is
        shown, anything else is invented and is withheld (`withheld` says so) unless
        `serving.show_unbacked`."""
        yield "place", plan.header
        hold = plan.header["notice"] is not None and not self.serving.show_unbacked
        text = []
        stats = None
        for chunk in self.backend.stream(plan.query, self._options(options), cancel, lease):
            if chunk.text:
                text.append(chunk.text)
                if not hold:
                    yield "token", {"text": chunk.text}
            stats = chunk.stats
        description, withheld = "".join(text).strip(), None
        if hold and refusal_problems(description, self._names):
            description, withheld = "", WITHHELD
        elif hold and description:
            yield "token", {"text": description}
        yield "done", {**plan.header, "description": description, "withheld": withheld,
                       "timings": stats.to_dict() if stats else None}

    def start(self, plan: Plan, options: GenerationOptions | None = None,
              abandoned: threading.Event | None = None) -> Job:
        """The answer, begun in a slot of its own in a thread of its own (see app.jobs). Waits up to
        `serving.queue_wait_s` for a slot, behind at most `serving.max_queue` others, and not at all
        once `abandoned` is set (see `abandon`); `Busy` else."""
        if self.stopping:
            raise Busy("the server is shutting down", 1)
        lease = self.backend.pool.acquire(self.serving.queue_wait_s, abandoned)
        job = Job(lambda cancel: self.stream(plan, options, cancel, lease), lease, self._forget)
        with self._jobs_lock:
            self._jobs.add(job)
        return job.start()

    def abandon(self, abandoned: threading.Event) -> None:
        """A request still waiting in line lost its client: it leaves the line, taking no slot."""
        abandoned.set()
        self.backend.pool.wake()

    def _forget(self, job: Job) -> None:
        with self._jobs_lock:
            self._jobs.discard(job)
            self.outcomes[job.outcome or "error"] += 1

    def answer(self, plan: Plan, options: GenerationOptions | None = None) -> dict:
        """The whole answer (for callers that do not stream); a backend failure raises."""
        for kind, payload in self.start(plan, options).events():
            if kind == "done":
                return payload
            if kind == "error":
                raise RuntimeError(payload["error"])
        raise RuntimeError("the stream ended without an answer")

    def health(self) -> dict:
        """What /health says: the slots (free, busy, waiting), the oldest answer in flight, and
        `degraded` when a slot has been held longer than any answer can take (it was lost)."""
        pool = self.backend.pool.stats()
        with self._jobs_lock:
            oldest = max((job.age_s for job in self._jobs), default=None)
            outcomes = dict(self.outcomes)
        lost = pool.oldest_held_s is not None and pool.oldest_held_s > self.serving.stale_after_s
        status = "stopping" if self.stopping else "degraded" if lost else "ok"
        return {"status": status, "contexts": {"total": pool.total, "free": pool.free, "busy": pool.busy},
                "queue": pool.waiting, "in_flight": pool.busy,
                "oldest_request_s": None if oldest is None else round(oldest, 2), "answers": outcomes,
                "oldest_context_held_s": pool.to_json()["oldest_held_s"],
                "answer_deadline_s": self.serving.answer_deadline_s, "stale_after_s": self.serving.stale_after_s}

    def shutdown(self) -> None:
        """Refuse new answers (503), wake every waiter, and end the answers in flight within a token."""
        self.stopping = True
        self.backend.pool.close()
        with self._jobs_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
