"""Which places a corpus teaches: the POIs of every cell its training split asks about.

A model knows the places of its corpus and no others, so the file that lists them travels with
the model, beside it under one name (`NAME.coverage.json` for a file, `coverage.json` inside a
folder). The pipeline's export stage writes it next to each export; `python -m app.coverage`
writes it for a model trained elsewhere; the app reads it to know what is around a pin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from core.artifacts import write_json
from data.corpus import read_split
from data.poi import POI


@dataclass(frozen=True)
class KnownPlace:
    poi_id: str
    name: str
    latitude: float
    longitude: float
    plus_code: str  # the cell the model was trained on
    short_code: str
    locality: str


def coverage_file_for(model: str | Path) -> Path:
    """Where a model's coverage file lives: beside a file model, inside a folder one."""
    path = Path(model)
    return path.with_name(path.stem + ".coverage.json") if path.suffix else path / "coverage.json"


def known_places(corpus: str | Path, pois: list[POI], split: str = "train") -> list[KnownPlace]:
    """The POIs of every cell the corpus's `split` teaches, by id."""
    by_id = {p.id: p for p in pois}
    seen: dict[str, KnownPlace] = {}
    for row in read_split(corpus, split):
        for poi_id in row["poi_ids"]:
            if poi_id in by_id and poi_id not in seen:
                p = by_id[poi_id]
                seen[poi_id] = KnownPlace(poi_id, p.name, p.latitude, p.longitude, row["plus_code"],
                                          row["short_code"], row["locality"])
    return sorted(seen.values(), key=lambda k: k.poi_id)


def write_coverage(out: str | Path, corpus: str | Path, places: list[KnownPlace], split: str = "train") -> None:
    """Write the coverage file of a model trained on `corpus`'s `split`, whose `places` are
    known_places(corpus, ..., split)."""
    write_json(out, {"corpus": str(corpus), "split": split, "places": [asdict(p) for p in places]},
               ensure_ascii=False)
