"""The tour guide behind the page and the HTTP API: a request (a pin or a Plus Code, interests, a
style) becomes a place, a prompt for the loaded model, and a streamed description with its
timings and an honest word on whether the model knows that spot."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.coverage import NEAR_M, Coverage
from data.geo import GeoError, Place, check_coordinates, encode, parse
from data.prompt import TourQuery
from data.vocab import check_interests, check_style
from models.backends import Backend, GenerationOptions


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

    @classmethod
    def parse(cls, body: dict) -> TourRequest:
        """From the API's JSON: coordinates or a Plus Code, interests, style; each problem named."""
        if not isinstance(body, dict):
            raise RequestError("body", "expected a JSON object")
        unknown = sorted(set(body) - {"latitude", "longitude", "plus_code", "interests", "style"})
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
        return cls(place, tuple(interests), style)

    @property
    def query(self) -> TourQuery:
        return TourQuery(self.place.plus_code, self.place.short_code, self.place.locality, self.interests, self.style)


class TourGuide:
    """One loaded backend and what the model covers."""

    def __init__(self, backend: Backend, coverage: Coverage | None = None,
                 options: GenerationOptions = GenerationOptions()):
        self.backend = backend
        self.coverage = coverage
        self.options = options

    @classmethod
    def coverage_for(cls, model: str) -> Coverage | None:
        """The coverage file shipped next to a model (`NAME.coverage.json`), if any."""
        path = Path(model)
        candidate = path.with_name(path.stem + ".coverage.json") if path.suffix else path / "coverage.json"
        return Coverage.load(candidate) if candidate.is_file() else None

    def header(self, place: Place) -> dict:
        """What the response says about the place: its codes, whether the model knows it, which
        known place it is answered for, or a notice that nothing it learnt is there."""
        header = {"plus_code": place.plus_code, "short_code": place.short_code, "locality": place.locality,
                  "latitude": place.latitude, "longitude": place.longitude, "coverage": None, "answered_for": None,
                  "notice": None, "model": self.backend.model, "backend": self.backend.kind}
        if self.coverage is None:
            return header
        coverage = header["coverage"] = self.coverage.lookup(place)
        nearest = coverage["nearest"]
        if coverage["near_known"]:
            header["answered_for"] = nearest
        else:
            where = f" (the nearest is {nearest['name']}, {nearest['distance_m'] / 1000:.1f} km away)" if nearest else ""
            header["notice"] = (f"This model knows no place within {NEAR_M:.0f} m of this spot{where}. The "
                                "description below is not backed by facts it learnt and may be invented.")
        return header

    def plan(self, request: TourRequest) -> tuple[dict, TourQuery]:
        """The response header and the query the model is asked. A pin a few metres from a place
        the model knows, but in the next 14 m cell, is answered for that place (and says so): the
        model learnt exact cells, and any other code would only make it guess."""
        header = self.header(request.place)
        near = header["answered_for"]
        if near is None or header["coverage"]["known"]:
            return header, request.query
        return header, TourQuery(near["plus_code"], near["short_code"], near["locality"], request.interests,
                                 request.style)

    def stream(self, request: TourRequest, options: GenerationOptions | None = None) -> Iterator[tuple[str, dict]]:
        """("place", header), then ("token", {"text"}) per piece, then ("done", full answer)."""
        header, query = self.plan(request)
        yield "place", header
        text = []
        stats = None
        for chunk in self.backend.stream(query, options or self.options):
            if chunk.text:
                text.append(chunk.text)
                yield "token", {"text": chunk.text}
            stats = chunk.stats
        yield "done", {**header, "description": "".join(text).strip(), "timings": stats.to_dict() if stats else None}

    def answer(self, request: TourRequest, options: GenerationOptions | None = None) -> dict:
        for kind, payload in self.stream(request, options):
            if kind == "done":
                return payload
        raise RuntimeError("the stream ended without an answer")
