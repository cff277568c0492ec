"""What the offline page takes from the Python side instead of restating it, written into the site
as config.json and data/gazetteer.json: the vocabularies, the system prompt, the model's chat
template, the geo constants, the places the model knows, the server's wording of the lead line and
the notices (with placeholders the page fills), the refusal detector's patterns, and the
localities a short code can name. What stays in JavaScript is the steps (static/geo.js,
refusal.js, prompt.js), which tests/test_offline.py checks against these functions.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict
from pathlib import Path

from app.coverage import AROUND_M, Coverage, KnownPlace, Nearby
from data import geo, refusal, vocab
from data.prompt import SYSTEM_PROMPT
from data.validate import PlaceNames
from models.backends import GenerationOptions


class _Placeholder(Nearby):
    """A known place seen from the pin whose name and direction are placeholders, for the wording."""

    @property
    def direction(self) -> str:
        return "{direction}"


def wording() -> dict:
    """app.service's lead line and far notice, as templates: the functions themselves are called with
    placeholder names and distances, so a change of their words reaches the page with the next build.
    (Which template applies, and how a distance is written, are steps the page mirrors.)"""
    from app.service import WITHHELD, far_notice, lead_line  # the server's module: loaded only to build

    place = KnownPlace("{poi_id}", "{name}", 0.0, 0.0, "", "", "")
    away = lead_line(_Placeholder(place, 123450.0, 0.0))
    far = far_notice(_Placeholder(place, 990.0, 0.0))
    if "123450" not in away or "990 m" not in far:
        raise ValueError("app.service's lead line or far notice no longer writes a distance as the page expects")
    return {"lead_here": lead_line(_Placeholder(place, 0.0, 0.0)), "lead_away": away.replace("123450", "{distance}"),
            "far_nearest": far.replace("990 m", "{how_far}"), "far_none": far_notice(None), "withheld": WITHHELD}


def _pattern(compiled: re.Pattern) -> dict:
    return {"source": compiled.pattern, "flags": "i" if compiled.flags & re.IGNORECASE else ""}


def refusal_rules(places: list[KnownPlace]) -> dict:
    """data.refusal's detector as data: its patterns, data.vocab's sentence and word patterns, and
    the name pattern of every known place (data.validate.PlaceNames, as the server builds it)."""
    from app.jobs import ServingConfig  # the server's module: loaded only to build

    names = PlaceNames(places)._patterns  # the very patterns the server searches
    return {"max_words": refusal.MAX_WORDS, "not_knowing": _pattern(refusal._NOT_KNOWING),
            "capitalised": _pattern(refusal._CAPITALISED), "first_person": _pattern(refusal._FIRST_PERSON),
            "word": _pattern(vocab._WORD), "sentence_end": _pattern(vocab._SENTENCE_END),
            "initial": _pattern(vocab._INITIAL), "abbreviations": sorted(vocab._ABBREVIATIONS),
            "names": [{"name": place.name, **_pattern(compiled)} for place, compiled in names],
            "show_unbacked": ServingConfig().show_unbacked}


def chat_template_of(model: Path) -> str | None:
    """The GGUF's own chat template, as llama.cpp reads it (None: the model ships none)."""
    from gguf import GGUFReader

    found = GGUFReader(str(model)).fields.get("tokenizer.chat_template")
    return bytes(found.parts[-1]).decode("utf-8") if found is not None else None


@functools.cache
def gazetteer_rows() -> bytes:
    """Every GeoNames locality a short code can name, most populous first (then by id), as
    [label, latitude, longitude]: the order data.geo.shorten tries them in, with the label that
    data.geo.Gazetteer.label_for gives (places without one can never be named, so are left out)."""
    gazetteer = geo.Gazetteer.default()
    rows = [[label, p.latitude, p.longitude]
            for p in sorted(gazetteer.places, key=lambda p: (-p.population, p.geonameid))
            if (label := gazetteer.label_for(p)) is not None]
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def page_config(model: Path, model_url: str, coverage: Coverage | None, n_ctx: int, threads: int,
                basemap: str | None) -> dict:
    """config.json: everything the page takes from the Python side."""
    places = coverage.places if coverage else []
    generation = GenerationOptions()
    center, zoom = [20.0, 0.0], 2  # the world, unless the model knows a region
    if places:
        lats, lons = [p.latitude for p in places], [p.longitude for p in places]
        center, zoom = [(min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2], 12
    return {
        "model": {"url": model_url, "name": model.name, "bytes": model.stat().st_size,
                  "chat_template": chat_template_of(model), "n_ctx": n_ctx, "threads": threads},
        "generation": {"temperature": generation.temperature, "top_p": generation.top_p,
                       "max_tokens": generation.max_tokens, "seed": generation.seed},
        "geo": {"earth_radius_m": geo.EARTH_RADIUS_M, "compass_points": list(geo.COMPASS_POINTS),
                "short_drop": geo.SHORT_DROP, "search_degrees": geo._SEARCH_DEGREES, "around_m": AROUND_M},
        "vocab": {"interests": list(vocab.INTERESTS), "styles": list(vocab.STYLES)},
        "prompt": {"system": SYSTEM_PROMPT},
        "places": [asdict(p) for p in places] if coverage else None,
        "wording": wording(),
        "refusal": refusal_rules(places),
        "gazetteer": "data/gazetteer.json",
        "map": {"center": center, "zoom": zoom, "basemap": basemap},
        "runtime": {"wasm": "lib/wllama/wllama.wasm", "compat_wasm": "lib/wllama-compat/wllama.wasm",
                    "compat_worker": "lib/wllama-compat/wllama.js"},
    }
