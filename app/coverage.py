"""Which places a model knows (its coverage file, data.coverage), seen from a pin.

A proxy model memorises the facts of exact 10-digit Plus Code cells (about 14 m wide). People
stand in front of things, not on the surveyed point, so the app looks around a pin: the known
places within `AROUND_M`, nearest first, each with its distance and compass direction. It answers
for one of them, asking the model about that place's own cell (as it was trained); with none
around, it says plainly that the answer is not backed by facts and how far the nearest one is.

    python -m app.coverage --corpus runs/smollm2-ship/data --out models/tour-guide.coverage.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from core.cli import fail
from data.coverage import KnownPlace, known_places, write_coverage
from data.geo import Place, bearing_deg, compass, distance_m
from data.poi import SYDNEY, load_pois

# The known places "around" a pin: a few minutes' walk, what a person standing there can see or
# reach. The one radius of the app: the API, the page and the notice all read it from here.
AROUND_M = 500.0


@dataclass(frozen=True)
class Nearby:
    """A known place seen from a pin: how far, and which way to walk."""

    place: KnownPlace
    distance_m: float
    bearing_deg: float  # from the pin to the place, clockwise from north

    @property
    def direction(self) -> str:
        return compass(self.bearing_deg)

    def to_json(self) -> dict:
        return {**asdict(self.place), "distance_m": round(self.distance_m, 1),
                "bearing_deg": round(self.bearing_deg) % 360, "direction": self.direction}


class Coverage:
    def __init__(self, places: list[KnownPlace]):
        self.places = places
        self._by_id = {p.poi_id: p for p in places}

    @classmethod
    def load(cls, path: str | Path) -> Coverage:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))["places"]
        return cls([KnownPlace(**row) for row in rows])

    def find(self, poi_id: str) -> KnownPlace | None:
        return self._by_id.get(poi_id)

    def seen_from(self, place: Place, known: KnownPlace) -> Nearby:
        return Nearby(known, distance_m(place.latitude, place.longitude, known.latitude, known.longitude),
                      bearing_deg(place.latitude, place.longitude, known.latitude, known.longitude))

    def nearest(self, place: Place) -> Nearby | None:
        """The closest known place however far (None only for an empty coverage)."""
        seen = (self.seen_from(place, p) for p in self.places)
        return min(seen, key=lambda n: (n.distance_m, n.place.poi_id), default=None)

    def around(self, place: Place, radius_m: float = AROUND_M) -> list[Nearby]:
        """The known places within `radius_m` of `place`, nearest first (ties by id, so the order is
        stable). A linear scan: a model knows a few hundred places, a request costs microseconds."""
        seen = [self.seen_from(place, p) for p in self.places]
        return sorted((n for n in seen if n.distance_m <= radius_m), key=lambda n: (n.distance_m, n.place.poi_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.coverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="the corpus the model was trained on")
    parser.add_argument("--pois", default=str(SYDNEY), help="the POI file the corpus was built from")
    parser.add_argument("--split", default="train", help="the split the model learnt")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        places = known_places(args.corpus, load_pois(args.pois), args.split)
        write_coverage(args.out, args.corpus, places, args.split)
    except (OSError, ValueError, KeyError) as exc:
        return fail(exc)
    print(f"{len(places)} known places -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
