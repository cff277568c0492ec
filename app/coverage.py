"""Which places a model knows: the cells of its training corpus, with their POIs.

A proxy model memorises the facts of exact 10-digit Plus Code cells (about 14 m wide). A pin
anywhere else gets an answer too, but an invented one; the app uses this file to say so plainly
and to point at the nearest place the model does know.

    python -m app.coverage --corpus runs/demo/data --out models/tour-guide-demo.coverage.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from core.artifacts import write_json
from core.cli import fail
from data.corpus import read_split
from data.geo import Place, distance_m
from data.poi import SYDNEY, load_pois

# A pin within this distance of a known POI is "at" it: a 10-digit cell is ~14 m, and people drop
# pins on a building's roof, not on the surveyed point. Beyond it the app offers the nearest one.
NEAR_M = 60.0


@dataclass(frozen=True)
class KnownPlace:
    poi_id: str
    name: str
    latitude: float
    longitude: float
    plus_code: str  # the cell the model was trained on
    short_code: str
    locality: str


class Coverage:
    def __init__(self, places: list[KnownPlace]):
        self.places = places
        self._cells = {p.plus_code for p in places}

    @classmethod
    def load(cls, path: str | Path) -> Coverage:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))["places"]
        return cls([KnownPlace(**row) for row in rows])

    def lookup(self, place: Place) -> dict:
        """Whether the model knows this spot, and the nearest place it does know."""
        known = place.plus_code in self._cells
        if not self.places:
            return {"known": False, "near_known": False, "nearest": None}
        nearest = min(self.places, key=lambda p: distance_m(place.latitude, place.longitude, p.latitude, p.longitude))
        metres = distance_m(place.latitude, place.longitude, nearest.latitude, nearest.longitude)
        return {"known": known, "near_known": known or metres <= NEAR_M,
                "nearest": {"name": nearest.name, "plus_code": nearest.plus_code, "short_code": nearest.short_code,
                            "locality": nearest.locality, "latitude": nearest.latitude,
                            "longitude": nearest.longitude, "distance_m": round(metres, 1)}}


def coverage_from_corpus(corpus: str | Path, pois: str | Path, split: str = "train") -> list[KnownPlace]:
    """The POIs of every cell the corpus's `split` teaches."""
    by_id = {p.id: p for p in load_pois(pois)}
    seen: dict[str, KnownPlace] = {}
    for row in read_split(corpus, split):
        for poi_id in row["poi_ids"]:
            if poi_id in by_id and poi_id not in seen:
                p = by_id[poi_id]
                seen[poi_id] = KnownPlace(poi_id, p.name, p.latitude, p.longitude, row["plus_code"],
                                          row["short_code"], row["locality"])
    return sorted(seen.values(), key=lambda k: k.poi_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.coverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="the corpus the model was trained on")
    parser.add_argument("--pois", default=str(SYDNEY), help="the POI file the corpus was built from")
    parser.add_argument("--split", default="train", help="the split the model learnt")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        places = coverage_from_corpus(args.corpus, args.pois, args.split)
    except (OSError, ValueError, KeyError) as exc:
        return fail(exc)
    write_json(args.out, {"corpus": str(args.corpus), "split": args.split, "places": [asdict(p) for p in places]},
               ensure_ascii=False)
    print(f"{len(places)} known places -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
