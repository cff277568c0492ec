"""Benchmark scripts: the depth experiment's arithmetic and verdict, and the inference bench end to end on a micro model."""

import json

from bench.depth import removal_counts, verdict
from compress.depth import BASELINES


def test_each_share_of_the_depth_becomes_whole_layers_with_both_neighbours_when_fractional():
    assert removal_counts(12) == [3, 4, 5, 6]  # 37.5% of 12 is 4.5
    assert removal_counts(24) == [6, 9, 12]
    assert removal_counts(64) == [16, 24, 32]
    assert removal_counts(4) == [1, 2]


def test_the_verdict_compares_guided_with_every_baseline_in_the_right_direction():
    def entry(kl, recall):
        return {split: {"kl": {"mean": kl}, "top1_agreement": {"mean": 0.5}, "perplexity": {"mean": 2.0},
                        "fact_recall": {"mean": recall}, "names_place": {"mean": 1.0}, "wrong_place": {"mean": 0.0},
                        "style_ok": {"mean": 1.0}} for split in ("test", "known")}

    summary = {"guided@3": entry(0.1, 0.9)}
    summary |= {f"{b}@3": entry(0.2, 0.95) for b in BASELINES}
    rows = verdict(summary, [3], ["known"])
    kl = [r for r in rows if r["metric"] == "kl"]
    recall = [r for r in rows if r["metric"] == "fact_recall"]
    assert len(kl) == len(BASELINES) and all(r["guided_wins"] for r in kl)  # lower KL wins
    assert not any(r["guided_wins"] for r in recall)  # lower recall loses
    ties = [r for r in rows if r["metric"] == "style_ok"]
    assert all(r["tie"] and not r["guided_wins"] for r in ties)


def test_the_experiment_runs_end_to_end_on_the_micro_teacher(micro_teacher, tiny_corpus, tmp_path):
    import json
    from pathlib import Path

    from bench.depth import main

    out = tmp_path / "depth.md"
    pois = Path(__file__).parent / "fixtures" / "pois_small.jsonl"
    assert main(["--teacher", str(micro_teacher), "--data", str(tiny_corpus), "--work", str(tmp_path / "work"),
                 "--out", str(out), "--seeds", "2", "--capture-samples", "4", "--calibration-samples", "4",
                 "--limit", "2", "--max-new-tokens", "12", "--latency-queries", "1", "--pois", str(pois),
                 "--device", "cpu"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["counts"] == [1, 2] and len(report["students"]) == 2 * (len(BASELINES) + 1 + 1)
    for remove in (1, 2):
        assert report["summary"][f"random@{remove}"]["known"]["kl"]["n"] == 2
        assert len(report["students"][f"guided-r{remove}"]["removed"]) == remove
    text = out.read_text()
    assert "## Verdict" in text and "| 2 | guided |" in text and "--out docs/results/depth.md" not in text
    for split in ("test", "known"):
        assert (tmp_path / f"depth_{split}.png").read_bytes()[:4] == b"\x89PNG"
    # Re-rendering from the JSON gives the same document.
    assert main(["--render", str(out.with_suffix(".json")), "--out", str(tmp_path / "again.md")]) == 0
    assert (tmp_path / "again.md").read_text() == text.replace("depth_", "again_").replace("depth.json", "again.json")


def test_the_experiment_heals_every_student_alike_and_measures_budgets_and_general_ability(
        micro_teacher, tiny_corpus, tmp_path):
    """--heal-steps, --budgets and --general on a 'fine-tuned' copy of the micro teacher whose base is the original."""
    import shutil
    from pathlib import Path

    from bench.depth import main

    teacher = tmp_path / "tuned" / "teacher"
    shutil.copytree(micro_teacher, teacher)
    (teacher / "training.json").write_text(json.dumps({"base": str(micro_teacher), "config": {"method": "full"},
                                                       "steps": 3, "seconds": 60, "after": {"fact_recall": 0.5}}))
    out = tmp_path / "real.md"
    pois = Path(__file__).parent / "fixtures" / "pois_small.jsonl"
    assert main(["--teacher", str(teacher), "--data", str(tiny_corpus), "--work", str(tmp_path / "work"),
                 "--out", str(out), "--seeds", "1", "--counts", "1", "--splits", "known", "--capture-samples", "4",
                 "--calibration-samples", "4", "--limit", "2", "--max-new-tokens", "8", "--latency-queries", "0",
                 "--pois", str(pois), "--device", "cpu", "--heal-steps", "2", "--heal-batch-size", "2",
                 "--heal-method", "finetune", "--candidates", "2", "--swap-rounds", "0", "--budgets", "0.6",
                 "--general", "--dtype", "bfloat16"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["teacher_name"] == "tuned" and report["teacher_kind"] == "fine-tuned"
    assert set(report["summary"]) == {f"{s}@1{h}" for s in ("guided", *BASELINES) for h in ("", "+heal")}
    assert len(report["verdict_healed"]) == len(report["verdict"]) > 0
    healed = json.loads((tmp_path / "work" / "healed" / "guided-r1" / "heal.json").read_text())
    assert healed["steps"] == 2
    # evaluated in bf16, but healed on fp32 master weights
    assert "bfloat16 weights" in report["machine"]
    saved = json.loads((tmp_path / "work" / "healed" / "guided-r1" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "float32"
    kinds = {(e["kind"], e.get("healed", False)) for e in report["budget"].values()}
    assert kinds == {(k, h) for k in ("depth", "width", "depth+width") for h in (False, True)}
    for entry in report["budget"].values():
        assert entry["shape"]["parameters"] <= 0.6 * report["teacher_params"]
    assert report["general"]["teacher"]["kl"] >= 0 and report["general"]["guided-r1+heal"]["prompts"] > 50
    text = out.read_text()
    assert "### After healing (2 steps each)" in text and "| 1 | guided+heal |" in text
    assert report["heal"]["method"] == "finetune" and "fine-tuned on the corpus answers" in text
    assert report["guided"]["candidates"] == 2 and "2 candidate layers a step, 0 swap round(s)" in text
    assert "## General ability" in text and "## Depth, width or both" in text
    # our numbers beside the published ones: ShortGPT's quarter-depth cut and Minitron's width-vs-depth
    anchors = text.split("## Against the published anchors")[1].split("## Latency")[0]
    assert "shortgpt+heal keeps" in anchors and "At 60% of the parameters after healing: width (" in anchors
    assert (tmp_path / "real_budget.png").read_bytes()[:4] == b"\x89PNG"


def test_inference_bench_writes_its_table(micro_teacher, tiny_corpus, tmp_path):
    """bench.inference on the micro teacher: every requested backend measured in its own process."""
    from bench.inference import main as bench_inference

    out = tmp_path / "inference.md"
    assert bench_inference(["--model", f"micro={micro_teacher}", "--corpus", str(tiny_corpus), "--repeats", "1",
                            "--max-tokens", "16", "--only", "torch,llamacpp", "--out", str(out),
                            "--work", str(tmp_path / "work")]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [(r["backend"], r["quant"]) for r in report["results"]] == [
        ("torch", "fp32"), ("llamacpp", "f16"), ("llamacpp", "q8_0"), ("llamacpp", "q4_k_m")]
    for r in report["results"]:
        assert r["decode_tok_s"] > 0 and r["peak_rss"] > r["baseline_rss"] > 0 and r["weight_bytes"] > 0
    text = out.read_text()
    assert "## micro" in text and "## Reading" in text and out.with_suffix(".png").stat().st_size > 1000


def test_load_bench_counts_every_request_and_no_errors(tmp_path):
    """bench.load against `python -m app` on the default model: all requests answered."""
    from bench.load import main as bench_load

    out = tmp_path / "app.md"
    assert bench_load(["--clients", "1,3", "--requests", "6", "--facts-styles", "brief,detailed", "--facts-limit", "3",
                       "--unknown-pins", "3", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [(r["clients"], r["requests"], r["errors"]) for r in report["levels"]] == [(1, 6, 0), (3, 6, 0)]
    assert report["server_alive_after"] and 0 < report["levels"][0]["p50_s"] <= report["levels"][0]["max_s"]
    checked = report["facts"]
    assert checked["places"] == 3 and checked["answers"] == 6 and set(checked["by_style"]) == {"brief", "detailed"}
    assert checked["answered_beside"] == 1.0  # pins on the places themselves
    assert report["unknown"]["answers"] == 3  # the model alone, on pins with no known place near
    text = out.read_text()
    assert "| 3 | 6 | 0 |" in text and "## Right facts, right place (3 known places x 2 styles" in text
    assert "## Unknown pins: the model alone (3 pins" in text
    out.write_text("")
    assert bench_load(["--render", "--out", str(out)]) == 0 and out.read_text() == text  # from its JSON alone


def test_the_facts_check_alone_asks_with_interests_the_place_is_not_tagged_with(tmp_path):
    from bench.load import main as bench_load

    out = tmp_path / "app-other.md"
    assert bench_load(["--clients", "", "--facts-styles", "brief", "--facts-limit", "2", "--facts-interests", "other",
                       "--unknown-pins", "0", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["levels"] == [] and report["facts"]["interests"] == "other" and report["facts"]["answers"] == 2
    assert report["unknown"] is None
    text = out.read_text()
    assert "Asked with two interests the place is not tagged with." in text and "## Under load" not in text


def test_other_interests_are_never_the_places_own():
    import random

    from bench.facts import interests_for
    from data.poi import SYDNEY, load_pois

    rng = random.Random(0)
    for poi in load_pois(SYDNEY):
        picked = interests_for(poi, "other", rng)
        assert len(picked) == 2 and not set(picked) & set(poi.interests)
        assert interests_for(poi, "own", rng) == list(poi.interests)[:3]


def test_the_facts_check_tells_own_facts_from_another_places():
    from bench.facts import check
    from data.poi import SYDNEY, load_pois
    from data.validate import PlaceNames

    pois = {p.id: p for p in load_pois(SYDNEY)}
    names, opera = PlaceNames(pois.values()), pois["sydney-opera-house"]
    other = pois["luna-park-sydney"]
    right = check({"answered_for": {"poi_id": opera.id}, "description": f"{opera.name}. {opera.facts[0]}"},
                  opera, pois, names, "brief")
    assert right.names and right.own_fact and right.other_facts == () and right.beside
    mixed = check({"answered_for": {"poi_id": opera.id}, "description": f"{opera.name}. {other.facts[0]}"},
                  opera, pois, names, "brief")
    assert mixed.names and not mixed.own_fact and mixed.other_facts == (other.id,)
    assert "text" not in right.record() and mixed.record()["text"] == mixed.text  # a reader sees what missed
    from bench.facts import rates, render

    section = "\n".join(render({"offset_m": 0.0, "places": 1, "styles": ["brief"], **rates([right, mixed]),
                                "checks": [right.record(), mixed.record()]}))
    assert "1 answer(s) miss" in section and f"speaks of {other.id}. \"{mixed.text}\"" in section


def test_a_fact_of_another_place_is_stated_in_one_sentence_not_scattered_over_an_answer():
    from bench.facts import check
    from data.poi import SYDNEY, load_pois
    from data.validate import PlaceNames

    pois = {p.id: p for p in load_pois(SYDNEY)}
    names, park = PlaceNames(pois.values()), pois["ballast-point-park"]
    fact = "It is now part of Sydney Harbour National Park."
    assert fact in pois["goat-island"].facts and fact not in park.facts
    scattered = (f"{park.name} is in Sydney. {park.facts[0]} The harbour is close. Its design is part of a "
                 "national story.")
    said = check({"answered_for": {"poi_id": park.id}, "description": scattered}, park, pois, names, "detailed")
    assert said.own_fact and said.other_facts == ()
    said = check({"answered_for": {"poi_id": park.id}, "description": f"{scattered} {fact}"}, park, pois, names,
                 "detailed")
    assert "goat-island" in said.other_facts


def test_transport_bench_on_the_micro_teacher_against_itself(micro_teacher, tiny_corpus, tmp_path):
    """bench.transport end to end: captures on the same texts, one ledger line per layer."""
    from bench.transport import main as bench_transport

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"keep": [0, 1, 2, 3]}))
    out = tmp_path / "transport.md"
    assert bench_transport(["--teacher", str(micro_teacher), "--student", str(micro_teacher), "--plan", str(plan),
                            "--corpus", str(tiny_corpus), "--samples", "3", "--work", str(tmp_path / "w"),
                            "--out", str(out)]) == 0
    ledger = [json.loads(line) for line in (tmp_path / "transport_ledger.jsonl").read_text().splitlines()]
    assert [r["student_layer"] for r in ledger] == [0, 1, 2, 3]
    assert all(r["cosine_after"] > 0.999 for r in ledger)  # a model against itself
    assert "| 3 | 3 |" in out.read_text()


def test_budget_students_without_healing_are_summed_up_and_set_against_minitron():
    from bench.depth import _budget_sentences, _minitron_sentences

    def entry(kind, recall, kl, params):
        return {"kind": kind, "fraction": 0.5, "metrics": {"known": {"fact_recall": recall, "kl": kl}},
                "shape": {"parameters": params}}

    report = {"budget": {"depth-50pct": entry("depth", 0.0, 2.0, 67.3e6), "width-50pct": entry("width", 0.0, 1.5, 46.5e6),
                         "depth+width-50pct": entry("depth+width", 0.0, 3.0, 60.3e6)}}
    assert _budget_sentences(report) == ["- At 50% of the teacher's parameters, fact recall on known places: "
                                         "depth 0.000, width 0.000, depth+width 0.000 (all tied)."]
    assert _minitron_sentences(report)[1] == ("  - At 50% of the parameters: width (46.5M) 1.500 vs depth (67.3M) "
                                              "2.000 (kl): width ahead, as Minitron found.")
