"""compress.refusal_mining: a second-pass corpus of the rows a student decides wrong (or nearly) at
the first answer token, repeated, with a share of the rest to hold the prior; val and test as they were."""

import json
from pathlib import Path

import pytest

from compress.refusal_mining import MINING_FILE, MiningConfig, main, select
from data.build import BuildConfig, build
from data.corpus import read_split
from data.sampling import SamplingConfig

FIXTURE = Path(__file__).parent / "fixtures" / "pois_small.jsonl"


def _row(i: int, known: bool) -> dict:
    return {"id": i, "poi_ids": [f"place-{i % 3}"] if known else [], "messages": []}


def test_hard_rows_lean_the_wrong_way_or_sit_within_the_band_and_come_back_repeated():
    rows = [_row(0, True), _row(1, True), _row(2, True), _row(3, False), _row(4, False), _row(5, False)]
    # known: refused (wrong), answered narrowly (hard), answered clearly; unknown: answered (wrong),
    # refused narrowly (hard), refused clearly
    margins = [0.5, -1.0, -6.0, -0.3, 1.5, 7.0]
    mined, summary = select(rows, margins, MiningConfig(band=2.0, repeat=3, keep=0.0))
    assert sorted(r["id"] for r in mined) == [0, 0, 0, 1, 1, 1, 3, 3, 3, 4, 4, 4]
    assert (summary["known_wrong"], summary["known_hard"], summary["unknown_wrong"], summary["unknown_hard"]) == (1, 2, 1, 2)
    assert summary["known_wrong_places"] == {"place-0": 1} and summary["mined_rows"] == 12
    # with no band only the wrong rows are hard; keep=1 brings every other row back once
    mined, summary = select(rows, margins, MiningConfig(band=0.0, repeat=2, keep=1.0))
    assert sorted(r["id"] for r in mined) == [0, 0, 1, 2, 3, 3, 4, 5] and summary["kept_easy"] == 4


def test_a_tie_is_a_description_so_an_unknown_cell_at_margin_zero_is_wrong_and_a_known_place_is_not():
    mined, summary = select([_row(0, True), _row(1, False)], [0.0, 0.0], MiningConfig(band=0.0, keep=0.0, repeat=1))
    assert [r["id"] for r in mined] == [1] and (summary["known_wrong"], summary["unknown_wrong"]) == (0, 1)


def test_the_kept_share_and_the_order_are_seeded():
    rows = [_row(i, True) for i in range(400)]
    margins = [-10.0] * 400
    first, _ = select(rows, margins, MiningConfig(keep=0.25, seed=1))
    again, _ = select(rows, margins, MiningConfig(keep=0.25, seed=1))
    other, _ = select(rows, margins, MiningConfig(keep=0.25, seed=2))
    assert first == again and first != other
    assert 60 < len(first) < 140


def test_bad_settings_and_mismatched_margins_are_refused():
    for bad in ({"band": -1.0}, {"repeat": 0}, {"keep": 1.5}):
        with pytest.raises(ValueError):
            MiningConfig(**bad)
    with pytest.raises(ValueError, match="margins"):
        select([_row(0, True)], [], MiningConfig())


def test_the_cli_writes_a_corpus_the_fine_tune_reads_with_val_and_test_untouched(micro_teacher, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    build(BuildConfig(pois=(FIXTURE,), sampling=SamplingConfig(samples_per_cell=8, val_fraction=0.2, test_fraction=0.2,
                                                              unknown_rate=0.3)), corpus, progress=False)
    out = tmp_path / "mined"
    assert main(["--model", str(micro_teacher), "--data", str(corpus), "--out", str(out), "--band", "1000"]) == 0
    report = json.loads((out / MINING_FILE).read_text())
    train = read_split(corpus, "train")
    assert report["known_rows"] + report["unknown_rows"] == report["rows"] == len(train)
    assert report["unknown_rows"] > 0 and report["known_hard"] + report["unknown_hard"] == len(train)
    # a band wider than any margin makes every row hard: each comes back `repeat` times, nothing else
    assert sorted(map(json.dumps, read_split(out, "train"))) == sorted(json.dumps(r) for r in train for _ in range(3))
    for split in ("val", "test"):
        assert (out / f"{split}.jsonl").read_bytes() == (corpus / f"{split}.jsonl").read_bytes()
    assert "hard rows x3" in capsys.readouterr().out
    assert main(["--model", str(tmp_path / "none"), "--data", str(corpus), "--out", str(tmp_path / "x")]) != 0
    assert not (tmp_path / "x").exists()
