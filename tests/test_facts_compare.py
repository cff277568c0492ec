"""bench.facts_compare: a candidate's app checks against the default's, paired over places and pins."""

import json

import pytest

from bench.facts_compare import compare, main


def _report(names_hit: int, refusals: int, places: int = 30, pins: int = 40, refused_column: bool = True) -> dict:
    """A bench.load result: `names_hit` of `places` places named in all 3 styles, `refusals` of `pins` refused."""
    checks = []
    for p in range(places):
        for style in ("brief", "stimulate", "detailed"):
            check = {"poi_id": f"p{p}", "style": style, "names": p < names_hit, "own_fact": p < names_hit,
                     "other_facts": [] if p < names_hit else ["elsewhere"]}
            checks.append({**check, "refused": False} if refused_column else check)
    unknown = [{"plus_code": f"c{k}", "problems": [] if k < refusals else ["names a place"]} for k in range(pins)]
    return {"command": "python -m bench.load", "facts": {"checks": checks}, "unknown": {"checks": unknown}}


def _row(rows, measure):
    return next(r for r in rows if r["measure"] == measure)


def test_a_model_against_itself_differs_by_nothing_and_cannot_be_told_apart():
    rows = compare(_report(27, 30), _report(27, 30))
    assert all(r["difference"] == 0 and r["verdict"] == "cannot tell" for r in rows)


def test_a_clear_gain_is_ahead_and_a_clear_loss_behind_whichever_way_a_measure_points():
    rows = compare(_report(29, 39), _report(10, 20))
    assert _row(rows, "names the place")["verdict"] == "ahead"
    assert _row(rows, "refuses an unknown pin")["verdict"] == "ahead"
    other = _row(rows, "states another place's fact")  # lower is better: fewer is ahead
    assert other["difference"] < 0 and other["verdict"] == "ahead"
    assert compare(_report(10, 20), _report(29, 39))[0]["verdict"] == "behind"


def test_a_measure_one_report_predates_is_not_compared():
    rows = compare(_report(27, 30), _report(27, 30, refused_column=False))
    assert _row(rows, "refuses a known place")["comparable"] is False
    assert _row(rows, "names the place")["comparable"] is True


def test_reports_on_different_places_are_refused():
    with pytest.raises(ValueError, match="different"):
        compare(_report(27, 30, places=30), _report(27, 30, places=31))


def test_the_cli_writes_the_report_its_json_and_its_plot(tmp_path, capsys):
    for name, report in (("new", _report(29, 39)), ("old", _report(27, 30))):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    out = tmp_path / "compare.md"
    assert main(["--new", str(tmp_path / "new.json"), "--old", str(tmp_path / "old.json"), "--out", str(out),
                 "--resamples", "200"]) == 0
    text = out.read_text()
    assert "Command: `python -m bench.facts_compare --new " in text
    assert "| refuses an unknown pin | 40 pins | 97.5% | 75.0% |" in text and "![differences](compare.png)" in text
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert json.loads((tmp_path / "compare.json").read_text())["rows"][0]["measure"] == "names the place"
    assert main(["--new", str(tmp_path / "missing.json"), "--old", str(tmp_path / "old.json"),
                 "--out", str(out)]) == 2
