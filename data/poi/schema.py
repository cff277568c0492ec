"""The POI record every source is turned into, and the checks a dataset must pass."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data.geo import plus_code_for
from data.vocab import INTERESTS

MIN_FACTS, MAX_FACTS = 3, 8
_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class POIError(ValueError):
    """A POI record or dataset file that breaks the schema."""


@dataclass(frozen=True)
class POI:
    id: str
    name: str
    latitude: float
    longitude: float
    plus_code: str  # full 10-digit code of the cell that contains (latitude, longitude)
    locality: str  # suburb or neighbourhood, for people; the geo layer picks its own locality
    interests: tuple[str, ...]
    facts: tuple[str, ...]
    extra: dict = field(default_factory=dict, compare=False)  # source-specific, kept verbatim

    @classmethod
    def from_dict(cls, row: dict) -> POI:
        known = {"id", "name", "latitude", "longitude", "plus_code", "locality", "interests", "facts"}
        missing = known - row.keys()
        if missing:
            raise POIError(f"POI {row.get('id', '?')!r} misses field(s) {sorted(missing)}")
        return cls(
            id=row["id"],
            name=row["name"],
            latitude=float(row["latitude"]),
            longitude=float(row["longitude"]),
            plus_code=row["plus_code"],
            locality=row["locality"],
            interests=tuple(row["interests"]),
            facts=tuple(row["facts"]),
            extra={k: v for k, v in row.items() if k not in known},
        )

    def to_dict(self) -> dict:
        row = asdict(self)
        extra = row.pop("extra")
        row["interests"], row["facts"] = list(self.interests), list(self.facts)
        row.update(extra)
        return row


def slugify(name: str) -> str:
    ascii_name = name.lower().replace("&", " and ").replace("'", "").replace("’", "")
    return re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")


def poi_problems(poi: POI, *, min_facts: int = MIN_FACTS, max_facts: int = MAX_FACTS) -> list[str]:
    """Everything wrong with one record; an empty list means it is valid."""
    problems = []
    if not _ID.match(poi.id):
        problems.append(f"id {poi.id!r} is not a lowercase slug")
    if not poi.name.strip():
        problems.append("empty name")
    if not (math.isfinite(poi.latitude) and -90 <= poi.latitude <= 90):
        problems.append(f"latitude {poi.latitude} out of range")
    elif not (math.isfinite(poi.longitude) and -180 <= poi.longitude <= 180):
        problems.append(f"longitude {poi.longitude} out of range")
    else:
        expected = plus_code_for(poi.latitude, poi.longitude)
        if poi.plus_code != expected:
            problems.append(f"plus_code {poi.plus_code} does not match coordinates ({expected})")
    bad = [i for i in poi.interests if i not in INTERESTS]
    if bad or not poi.interests:
        problems.append(f"interests {list(poi.interests)} must be non-empty, from {list(INTERESTS)}")
    if len(set(poi.interests)) != len(poi.interests):
        problems.append("duplicate interests")
    if not min_facts <= len(poi.facts) <= max_facts:
        problems.append(f"{len(poi.facts)} facts, needs {min_facts}-{max_facts}")
    if any(not f.strip() for f in poi.facts):
        problems.append("empty fact")
    return problems


def load_pois(path: str | Path, *, check: bool = True) -> list[POI]:
    """Read a POI JSONL file; with `check`, raise POIError naming every bad line."""
    pois, errors = [], []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            poi = POI.from_dict(json.loads(line))
        except (json.JSONDecodeError, POIError, TypeError, ValueError) as exc:
            errors.append(f"{path}:{lineno}: {exc}")
            continue
        if check:
            errors += [f"{path}:{lineno} ({poi.id}): {p}" for p in poi_problems(poi)]
        pois.append(poi)
    if check:
        for what in ("id", "name"):
            seen: dict[str, int] = {}
            for poi in pois:
                key = getattr(poi, what).casefold()
                seen[key] = seen.get(key, 0) + 1
            errors += [f"{path}: duplicate {what} {k!r}" for k, n in seen.items() if n > 1]
    if errors:
        raise POIError("\n".join(errors))
    return pois


def save_pois(pois: list[POI], path: str | Path) -> None:
    lines = [json.dumps(p.to_dict(), ensure_ascii=False) for p in pois]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
