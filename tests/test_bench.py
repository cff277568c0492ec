"""Benchmark scripts: the depth experiment's arithmetic and verdict, and the inference bench end to end on a micro model."""

import json
import sys
import urllib.request

import pytest

from bench.depth import removal_counts


def test_each_share_of_the_depth_becomes_whole_layers_with_both_neighbours_when_fractional():
    assert removal_counts(12) == [3, 4, 5, 6]  # 37.5% of 12 is 4.5
    assert removal_counts(24) == [6, 9, 12]
    assert removal_counts(64) == [16, 24, 32]
    assert removal_counts(4) == [1, 2]


def test_kinds_pool_their_runs_and_the_verdict_is_read_from_the_interval():
    from bench.depth_summary import comparisons, kinds

    def final(hits):  # one prompt per place; `hits` of 2 facts recalled at each of 30 places
        answers = [{"plus_code": f"p{i}", "style": "brief", "facts": [h, 2], "names_place": True, "wrong_places": []}
                   for i, h in enumerate(hits)]
        places = {f"p{i}": {"logprob": -1.0, "tokens": 10, "fact_right": h, "fact_tokens": 2} for i, h in enumerate(hits)}
        return {"answers": answers, "places": places}

    def run(strategy, seed=0):
        return {"strategy": strategy, "remove": 2, "loss": "kl", "steps": 4, "curve": [{"step": 0, "fact_accuracy": 0.5}]}

    healed = {"a.s0": run("guided-heal"), "a.s1": run("guided-heal", 1), "b.s0": run("shortgpt"), "c.s0": run("random")}
    final_of = {"a.s0": final([2] * 30), "a.s1": final([1] * 30), "b.s0": final([0] * 30),
                "c.s0": final([1 + (i % 2) for i in range(30)])}
    table = kinds(healed, final_of)
    assert table["guided-heal@2/kl"]["runs"] == ["a.s0", "a.s1"]
    assert table["guided-heal@2/kl"]["values"]["fact_recall"] == 0.75  # pooled over both seeds
    rows = {(r["a"], r["b"]): r["metrics"] for r in comparisons(table, ["guided-heal", "shortgpt", "random"], 300)}
    assert rows[("guided-heal", "shortgpt")]["fact_recall"]["verdict"] == "ahead"
    assert rows[("shortgpt", "random")]["fact_recall"]["verdict"] == "behind"
    assert rows[("guided-heal", "shortgpt")]["names_place"]["verdict"] == "cannot tell"  # all name their place
    interval = rows[("guided-heal", "random")]["fact_recall"]
    assert interval["low"] <= interval["difference"] <= interval["high"] and interval["places"] == 30


def test_the_experiment_runs_end_to_end_on_the_micro_teacher(micro_teacher, tiny_corpus, tmp_path):
    from pathlib import Path

    from bench.depth import main

    out, work = tmp_path / "depth.md", tmp_path / "work"
    pois = Path(__file__).parent / "fixtures" / "pois_small.jsonl"
    argv = ["--teacher", str(micro_teacher), "--data", str(tiny_corpus), "--work", str(work), "--out", str(out),
            "--strategies", "guided,guided-heal,shortgpt,random", "--seeds", "2", "--counts", "1",
            "--capture-samples", "4", "--calibration-samples", "4", "--candidates", "2", "--swap-rounds", "0",
            "--probe-sets", "1", "--probe-swaps", "1", "--probe-steps", "2", "--heal-losses", "ce",
            "--heal-steps", "5", "--heal-batch-size", "4", "--heal-lr", "3e-3", "--max-new-tokens", "8",
            "--resamples", "200", "--pois", str(pois), "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["kinds"]) == {f"{s}@1/ce" for s in ("guided", "guided-heal", "shortgpt", "random")}
    assert report["kinds"]["random@1/ce"]["runs"] == ["random0-r1+ce.s0", "random1-r1+ce.s0"]
    for info in report["healed"].values():  # the same budget for all, a curve of at least 5 points after step 0
        assert info["steps"] == 5 and [p["step"] for p in info["curve"]] == [0, 1, 2, 3, 4, 5]
        assert all({"answer_logprob", "fact_accuracy"} <= set(p) for p in info["curve"])
    # guided-heal probed its candidates; its winner's healing went on from its probe
    probes = report["students"]["guided-heal-r1"]["probes"]
    assert len(probes["candidates"]) >= 2 and sum(c["won"] for c in probes["candidates"]) == 1
    assert report["healed"]["guided-heal-r1+ce.s0"]["continued_probe"]
    # per-prompt results of every model: each known place in each style the corpus asks it in
    prompts = report["answers"]["teacher"]
    assert len(prompts) == report["places"]["prompts"] > report["places"]["known"] > 0
    assert all({"plus_code", "style", "facts", "names_place", "wrong_places"} <= set(p) for p in prompts)
    assert set(report["answers"]) == {"teacher", *report["healed"]}
    pairs = {(r["a"], r["b"]) for r in report["comparisons"]}
    assert ("guided", "guided-heal") in pairs and ("shortgpt", "random") in pairs and len(pairs) == 6
    assert all(m["verdict"] in ("ahead", "behind", "cannot tell") for r in report["comparisons"]
               for m in r["metrics"].values())
    text = out.read_text()
    for section in ("## Verdict", "## Differences between strategies", "## Healing curves", "## guided-heal's probes"):
        assert section in text
    assert "--out docs/results/depth.md" not in text and (tmp_path / "depth_curves_ce.png").read_bytes()[:4] == b"\x89PNG"
    # Re-rendering from the JSON gives the same document.
    assert main(["--render", str(out.with_suffix(".json")), "--out", str(tmp_path / "again.md")]) == 0
    assert (tmp_path / "again.md").read_text() == text.replace("depth_", "again_")

    # A rerun with one setting changed makes again what reads it, and only that.
    plans = json.loads((work / "plans.json").read_text())["entries"]
    assert main(argv[:argv.index("--candidates") + 1] + ["3"] + argv[argv.index("--candidates") + 2:]) == 0
    again = json.loads((work / "plans.json").read_text())["entries"]
    assert again["guided-r1"]["key"] != plans["guided-r1"]["key"]
    assert again["guided-r1"]["result"]["plan"]["guided"]["config"]["candidates"] == 3
    assert again["shortgpt-r1"] == plans["shortgpt-r1"] and again["random0-r1"] == plans["random0-r1"]


def test_the_experiment_compares_healing_losses_budgets_and_general_ability(micro_teacher, tiny_corpus, tmp_path):
    """--heal-losses, --budgets and --general on a 'fine-tuned' copy of the micro teacher whose base is the original."""
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
                 "--out", str(out), "--strategies", "guided,shortgpt", "--counts", "1", "--capture-samples", "4",
                 "--calibration-samples", "4", "--candidates", "2", "--swap-rounds", "0", "--heal-losses", "ce,kl",
                 "--heal-steps", "2", "--heal-batch-size", "2", "--curve-points", "2", "--styles", "brief",
                 "--places", "2", "--max-new-tokens", "8", "--resamples", "100", "--pois", str(pois),
                 "--device", "cpu", "--budgets", "0.6", "--general", "--dtype", "bfloat16"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["teacher_name"] == "tuned" and report["teacher_kind"] == "fine-tuned"
    assert report["places"] == {"known": 2, "prompts": 2, "styles": ["brief"]}
    assert {(r["a"], r["b"], r["strategy"]) for r in report["loss_comparisons"]} == {
        ("kl", "ce", "guided"), ("kl", "ce", "shortgpt")}
    saved = json.loads((tmp_path / "work" / "healed" / "guided-r1+kl.s0" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "float32"  # evaluated in bf16, healed on fp32 weights
    kinds = {(e["kind"], e["loss"]) for e in report["budget"]["kinds"]}
    assert kinds == {(k, loss) for k in ("depth", "width", "depth+width") for loss in ("ce", "kl")}
    assert all(e["parameters"] <= 0.6 * report["teacher_params"] for e in report["budget"]["kinds"])
    assert {(r["a"], r["b"]) for r in report["budget"]["comparisons"]} == {("width", "depth"), ("depth+width", "depth")}
    assert report["general"]["teacher"]["kl"] >= 0 and report["general"]["guided-r1+kl.s0"]["prompts"] > 50
    text = out.read_text()
    for section in ("## Healing losses at equal steps", "## General ability", "## Depth, width or both"):
        assert section in text


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


def test_the_facts_check_asks_as_many_at_once_as_the_server_has_contexts_and_gets_the_same_answers():
    """Greedy on a context each: two requests in flight give the answers of one at a time, in order."""
    from bench import serve
    from bench.facts import measure

    with serve([sys.executable, "-m", "app", "--port", "{port}"], "/health", {"HF_HUB_OFFLINE": "1"}) as url:
        one = measure(url, ("brief", "detailed"), limit=3, seed=4)
        two = measure(url, ("brief", "detailed"), limit=3, seed=4, workers=2)
    assert one == two and one["answers"] == 6


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


def test_a_refusal_for_a_place_the_model_should_know_is_counted_as_a_miss():
    from bench.facts import check, rates, render
    from data.poi import SYDNEY, load_pois
    from data.refusal import REFUSALS
    from data.validate import PlaceNames

    pois = {p.id: p for p in load_pois(SYDNEY)}
    names, opera = PlaceNames(pois.values()), pois["sydney-opera-house"]
    refused = check({"answered_for": {"poi_id": opera.id}, "description": REFUSALS[0]}, opera, pois, names, "brief")
    told = check({"answered_for": {"poi_id": opera.id}, "description": f"{opera.name}. {opera.facts[0]}"},
                 opera, pois, names, "brief")
    assert refused.refused and refused.missed and not told.refused
    assert rates([refused, told])["refused"] == 0.5
    section = "\n".join(render({"offset_m": 0.0, "places": 1, "styles": ["brief"], **rates([refused, told]),
                                "checks": [refused.record(), told.record()]}))
    assert "| all | 2 | 100.0% | 50.0% | 50.0% | 0.0% | 50.0% |" in section and "refuses; does not name it" in section


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


def test_a_started_server_answers_until_stopped_and_one_that_dies_says_why(tmp_path):
    from bench import start_server, stop

    (tmp_path / "health").write_text("ok")
    proc, url = start_server([sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1",
                              "--directory", str(tmp_path)], "/health", timeout_s=30)
    assert urllib.request.urlopen(url + "/health", timeout=5).read() == b"ok"
    assert stop(proc) is not None and proc.log.closed
    with pytest.raises(RuntimeError, match="did not answer /health within 30 s: .*no such port"):
        start_server([sys.executable, "-c", "import sys; sys.exit('no such port {port}')"], "/health", timeout_s=30)


def test_strategies_that_chose_the_same_layers_are_healed_and_answered_once(monkeypatch, tmp_path):
    """Two strategies that remove the same layers make one model; healing it twice on the same batches
    would spend an hour to learn nothing. A probe-continuing student is never a twin."""
    import bench.depth_students as ds
    from compress.guided import GuidedConfig
    from compress.heal_config import HealConfig
    from models.load import LoadOptions

    healed_dirs = []

    def heal(student, teacher, tokenizer, data, config, out, keep, **kw):
        healed_dirs.append(out.name)
        return None, {"steps": 3, "tokens": 30, "seconds": 1.0, "continued_probe": kw["resume_from"] is not None,
                      "validations": [{"step": 0, "answer_logprob": -1.0}, {"step": 3, "answer_logprob": -0.5}]}

    monkeypatch.setattr(ds, "heal", heal)
    monkeypatch.setattr(ds, "load_model", lambda path, load: (object(), None))
    setup = ds.Setup(None, None, "teacher", {}, None, GuidedConfig(), HealConfig(), ("ce",), (0, 1), None,
                     tmp_path, tmp_path, tmp_path, LoadOptions())
    student = {"keep": [0, 1], "probe_folder": None}
    students = {"shortgpt-r2": {**student, "removed": [3, 4], "path": "a"},
                "angular-r2": {**student, "removed": [4, 3], "path": "b"},
                "u-shape-r2": {**student, "removed": [2, 3], "path": "c"},
                "guided-heal-r2": {**student, "removed": [3, 4], "path": "d", "probe_folder": "probes/x"}}
    healed = ds.heal_all(setup, students)
    assert sorted(healed_dirs) == sorted(["shortgpt-r2+ce.s0", "shortgpt-r2+ce.s1", "u-shape-r2+ce.s0",
                                          "u-shape-r2+ce.s1", "guided-heal-r2+ce.s0", "guided-heal-r2+ce.s1"])
    twin = healed["angular-r2+ce.s1"]
    assert twin["same_as"] == "shortgpt-r2+ce.s1" and twin["path"] == healed["shortgpt-r2+ce.s1"]["path"]
    assert twin["student"] == "angular-r2" and twin["curve"] == healed["shortgpt-r2+ce.s1"]["curve"]
    assert healed["guided-heal-r2+ce.s0"]["continued_probe"] and "same_as" not in healed["guided-heal-r2+ce.s0"]
