"""Layer deletion keeps a model that loads, caches and computes exactly its kept layers; the
guided search removes what it measures to matter least; the CLI explains each removal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.calibration import encode_rows, split_rows
from compress.depth import BASELINES, PLAN_FILE, StrategyInputs, choose, load_analysis, make_plan
from compress.depth import main as depth_main
from compress.guided import Calibration, GuidedConfig, guided_removal
from compress.layers import delete_layers, layers_removed
from models.checkpoint import save_model_dir
from models.load import LoadOptions, decoder_layers, load_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["qwen3", "llama"])
def model_dir(request, micro_teacher, tmp_path):
    if request.param == "qwen3":
        return micro_teacher
    from test_teacher import save_tiny
    from transformers import AutoTokenizer

    return save_tiny("llama", tmp_path / "llama", AutoTokenizer.from_pretrained(micro_teacher))


def manual_forward(model, ids, keep):
    """The original model run through its kept layers only, by hand."""
    inner = model.model
    hidden = inner.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rope = inner.rotary_emb(hidden, positions)
    for i in keep:  # sdpa without a mask is causal
        hidden = inner.layers[i](hidden, attention_mask=None, position_embeddings=rope, position_ids=positions)
    return model.lm_head(inner.norm(hidden))


def test_a_pruned_checkpoint_reloads_and_computes_exactly_its_kept_layers(model_dir, tmp_path):
    original, tok = load_model(str(model_dir), LoadOptions(dtype="float32"))
    n = len(decoder_layers(original))
    keep = [1] if n == 2 else [0, 2, 3]  # the 2-layer llama loses its first layer
    ids = torch.tensor([tok("Bondi Beach has a long promenade and an ocean pool.")["input_ids"]])
    with torch.no_grad():
        expected = manual_forward(original, ids, keep)

    pruned, _ = load_model(str(model_dir), LoadOptions(dtype="float32"))
    delete_layers(pruned, keep)
    # In memory, before any reload rebuilds the modules: attention k owns cache slot k, so a
    # static cache sized to the new depth works and matches uncached generation.
    assert [layer.self_attn.layer_idx for layer in decoder_layers(pruned)] == list(range(len(keep)))
    with torch.no_grad():
        static = pruned.generate(ids[:, :6], max_new_tokens=8, do_sample=False, cache_implementation="static",
                                 pad_token_id=tok.pad_token_id)
        plain = pruned.generate(ids[:, :6], max_new_tokens=8, do_sample=False, use_cache=False,
                                pad_token_id=tok.pad_token_id)
    assert torch.equal(static, plain)
    save_model_dir(pruned, tok, tmp_path / "pruned")
    reloaded, _ = load_model(str(tmp_path / "pruned"), LoadOptions(dtype="float32"))
    assert reloaded.config.num_hidden_layers == len(keep) == len(decoder_layers(reloaded))
    assert getattr(reloaded.config, "layer_types", None) in (None, ["full_attention"] * len(keep))
    assert [layer.self_attn.layer_idx for layer in decoder_layers(reloaded)] == list(range(len(keep)))
    assert (tmp_path / "pruned" / "tokenizer.json").is_file()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)

        # With a KV cache, layer k must read and write cache slot k: same tokens as without.
        prompt = ids[:, :6]
        cached = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
        uncached = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(cached, uncached)


def test_bad_keep_lists_are_refused(micro_teacher):
    model, _ = load_model(str(micro_teacher))
    for keep in ([], [2, 1], [0, 0], [0, 9]):
        with pytest.raises(ValueError, match="keep must be increasing"):
            delete_layers(model, keep)


ANALYSIS = {
    "layers": list(range(8)),
    "weighted": {
        "block_influence": [0.9, 0.2, 0.05, 0.04, 0.3, 0.06, 0.1, 0.5],
        "importance": [1.0, 0.3, 0.02, 0.01, 0.4, 0.03, 0.2, 0.6],
        "states": ["input.0"] + [f"output.{i}" for i in range(8)],
        # angle between states i and j: |i - j| / 10, except that layers 2..5 barely turn the stream
        "pair_angle": [[abs(i - j) / (100 if min(i, j) >= 2 and max(i, j) <= 6 else 10) for j in range(9)]
                       for i in range(9)],
    },
}


def choose_removed(strategy, analysis, remove, seed=0):
    return choose(strategy, StrategyInputs(len(analysis["layers"]), analysis, seed=seed), remove)[0]


def test_baselines_pick_what_their_papers_say():
    assert choose_removed("shortgpt", ANALYSIS, 3) == [2, 3, 5]
    assert choose_removed("angular", ANALYSIS, 3) in ([2, 3, 4], [3, 4, 5])
    assert choose_removed("u-shape", ANALYSIS, 6) == [1, 2, 3, 4, 5, 6]
    alternate = choose_removed("alternate", ANALYSIS, 3)
    assert alternate == [1, 3, 5] and 0 not in alternate and 7 not in alternate
    assert choose_removed("alternate", ANALYSIS, 2) == [1, 5]
    # Exactly half of an even stack: "every other layer" can only mean all odd positions.
    assert choose_removed("alternate", ANALYSIS, 4) == [1, 3, 5, 7]
    assert choose_removed("random", ANALYSIS, 4, seed=3) == choose_removed("random", ANALYSIS, 4, seed=3)
    assert {tuple(choose_removed("random", ANALYSIS, 4, seed=s)) for s in range(5)} != {tuple(choose_removed("random", ANALYSIS, 4, seed=0))}
    for strategy in BASELINES:
        with pytest.raises(ValueError):
            choose_removed(strategy, ANALYSIS, 8)


def test_trial_removal_inside_the_block_is_exact_and_leaves_the_model_whole(micro_teacher):
    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    ids = torch.tensor([tok("The Opera House sails are covered in tiles.")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with layers_removed(model, [1, 2]):
            assert model.config.num_hidden_layers == 2
            inside = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert model.config.num_hidden_layers == 4 and len(decoder_layers(model)) == 4
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == [0, 1, 2, 3]
    with torch.no_grad():
        assert torch.allclose(inside, manual_forward(model, ids, [0, 3]), atol=1e-5)


@pytest.fixture
def calibration(micro_teacher, tiny_corpus):
    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    rows = split_rows(tiny_corpus, "calibration", 6)
    return Calibration(model, encode_rows(rows, tok), batch_size=4)


def test_guided_takes_the_measured_best_single_layer_and_only_improves_by_swapping(calibration):
    kl = {layer: calibration.measure([layer])["kl"] for layer in range(4)}
    assert all(value > 0 for value in kl.values())
    removed, trace = guided_removal(calibration, None, 1, GuidedConfig(candidates=0), progress=False)
    assert removed == [min(kl, key=kl.get)]
    assert trace["steps"][0]["candidates"] == {str(k): round(v, 6) for k, v in kl.items()}

    removed, trace = guided_removal(calibration, None, 2, GuidedConfig(candidates=0, swap_rounds=2), progress=False)
    final = calibration.measure(removed)["kl"]
    assert trace["final"]["kl"] == final
    assert final <= calibration.measure(trace["greedy_removed"])["kl"]
    # A local optimum: no single exchange of a removed layer for a kept one lowers the KL further.
    kept = [l for l in range(4) if l not in removed]
    for out in removed:
        for back in kept:
            assert calibration.measure([l for l in removed if l != out] + [back])["kl"] >= final * (1 - 1e-6)


def test_guided_tries_only_the_layers_the_statistics_rank_least_important(calibration):
    analysis = {"weighted": {"ranking": [2, 0, 3, 1]}}
    removed, trace = guided_removal(calibration, analysis, 1, GuidedConfig(candidates=1, swap_rounds=0), progress=False)
    assert removed == [2] and list(trace["steps"][0]["candidates"]) == ["2"]


def test_angular_reads_a_real_analysis(micro_analysis):
    analysis = load_analysis(micro_analysis)
    block = choose_removed("angular", analysis, 2)
    assert len(block) == 2 and block[1] - block[0] == 1
    plan = make_plan("angular", StrategyInputs(4, analysis), 2)
    assert plan.removed == block and all("closest in angle" in row["reason"] for row in plan.layers if not row["kept"])


def test_the_cli_writes_a_loadable_pruned_model_and_a_plan_that_explains_it(micro_teacher, micro_analysis, tiny_corpus, tmp_path):
    out = tmp_path / "guided"
    assert depth_main(["--model", str(micro_teacher), "--analysis", str(micro_analysis), "--strategy", "guided",
                       "--keep", "2", "--data", str(tiny_corpus), "--calibration-samples", "6",
                       "--out", str(out), "--device", "cpu"]) == 0
    plan = json.loads((out / PLAN_FILE).read_text())
    assert plan["strategy"] == "guided" and len(plan["keep"]) == 2 and sorted(plan["keep"] + plan["removed"]) == [0, 1, 2, 3]
    for row in plan["layers"]:
        assert set(row["weighted"]) >= {"importance", "block_influence", "importance_rank"}
        assert row["kept"] == (row["layer"] in plan["keep"])
        assert row["kept"] or "KL" in row["reason"]
    assert len(plan["guided"]["steps"]) == 2

    original, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    pruned, _ = load_model(str(out), LoadOptions(dtype="float32"))
    ids = torch.tensor([tok("Hyde Park Barracks housed convicts from 1819.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=ids).logits, manual_forward(original, ids, plan["keep"]), atol=1e-5)
        cached = pruned.generate(ids[:, :5], max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
        uncached = pruned.generate(ids[:, :5], max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(cached, uncached)
    assert (out / "chat_template.jinja").is_file() or "chat_template" in json.loads((out / "tokenizer_config.json").read_text())


@pytest.mark.parametrize("args, message", [
    (["--strategy", "guided", "--keep", "2"], "needs --data"),
    (["--strategy", "shortgpt", "--keep", "2"], "needs --analysis"),
    (["--strategy", "random", "--keep", "4"], "--keep must be between 1 and 3"),
    (["--strategy", "alternate", "--keep", "2", "--analysis", "nowhere"], "no analysis at nowhere"),
])
def test_the_cli_refuses_what_it_cannot_do_with_a_reason(micro_teacher, tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "compress.depth", "--model", str(micro_teacher), "--out",
                             str(tmp_path / "x"), "--device", "cpu", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_every_strategy_is_one_row_of_the_table_and_says_what_it_lacks():
    from compress.depth import STRATEGIES, plan_settings

    assert set(STRATEGIES) == {"guided", "guided-facts", "guided-heal", *BASELINES}
    assert all(s.description and s.name == name for name, s in STRATEGIES.items())
    with pytest.raises(ValueError, match="strategy guided needs calibration samples"):
        choose("guided", StrategyInputs(8, ANALYSIS), 2)
    with pytest.raises(ValueError, match="needs --analysis"):
        choose("shortgpt", StrategyInputs(8), 2)
    with pytest.raises(ValueError, match="unknown strategy 'deepest'"):
        choose("deepest", StrategyInputs(8), 2)
    # A plan is keyed by what its choice depends on, and by nothing else.
    config = GuidedConfig()
    assert plan_settings("random", config, seed=3) == {"strategy": "random", "draw": 3}
    assert "candidates" in plan_settings("guided", config) and "fact_weight" not in plan_settings("guided", config)
    assert "fact_weight" in plan_settings("guided-facts", config)
    assert {"probe_steps", "probe_sets"} <= set(plan_settings("guided-heal", config))


def test_the_fact_weighted_search_weighs_fact_tokens_as_told(micro_teacher, tiny_corpus):
    from compress.guided import calibration_for

    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    config = GuidedConfig(calibration_samples=6, fact_weight=4.0)
    weighted = calibration_for(model, tok, tiny_corpus, config, ROOT / "tests" / "fixtures" / "pois_small.jsonl")
    assert any(bool((w > 1).any()) for w in weighted.weights) and all(set(w.tolist()) <= {1.0, 4.0}
                                                                       for w in weighted.weights)
    measured = weighted.measure([1])
    assert measured["fact_kl"] > 0 and measured["fact_kl"] != measured["kl"]
    removed, trace = guided_removal(weighted, None, 1, config, progress=False, objective="fact_kl")
    assert removed == [min(range(4), key=lambda l: weighted.measure([l])["fact_kl"])]
    assert trace["objective_label"] == "KL with fact tokens x4"
    plain = calibration_for(model, tok, tiny_corpus, config)  # no POI file: no facts to weigh
    with pytest.raises(ValueError, match="POI file"):
        guided_removal(plain, None, 1, config, progress=False, objective="fact_kl")


def test_a_search_run_again_measures_nothing_twice_unless_its_inputs_changed(micro_teacher, tiny_corpus, tmp_path):
    from compress.guided import calibration_for

    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    store, config = tmp_path / "calibration.json", GuidedConfig(calibration_samples=6, candidates=2, swap_rounds=1)
    first = calibration_for(model, tok, tiny_corpus, config, store=store)
    removed, _ = guided_removal(first, None, 2, config, progress=False)

    again = calibration_for(model, tok, tiny_corpus, config, store=store)
    again._measured = lambda key: pytest.fail(f"measured {key} again")
    assert guided_removal(again, None, 2, config, progress=False)[0] == removed
    assert again.measure([1]) == first.measure([1])

    fewer = calibration_for(model, tok, tiny_corpus, GuidedConfig(calibration_samples=4), store=store)
    assert fewer.measure([1])["kl"] != first.measure([1])["kl"]  # other samples: measured anew


def test_guided_heal_probes_every_candidate_and_the_winner_heals_on_from_its_probe(
        micro_teacher, micro_analysis, tiny_corpus, tmp_path, monkeypatch):
    from compress import guided_heal
    from compress.depth import ProbeSetup, probe_folder
    from compress.heal import heal
    from compress.heal_config import HealConfig

    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    config = GuidedConfig(calibration_samples=6, candidates=0, swap_rounds=0, probe_sets=2, probe_swaps=1,
                          probe_steps=2)
    calibration = Calibration(model, encode_rows(split_rows(tiny_corpus, "calibration", 6), tok), batch_size=4)
    healing = HealConfig(method="finetune", max_steps=4, batch_size=4, eval_samples=4, warmup=1, lr=3e-3, patience=0)
    inputs = StrategyInputs(4, load_analysis(micro_analysis), calibration, config,
                            probe=ProbeSetup(healing, tiny_corpus, tok, tmp_path / "probes"), progress=False)
    plan = make_plan("guided-heal", inputs, 3)
    trace = plan.guided
    sets = [tuple(c["removed"]) for c in trace["candidates"]]
    assert len(sets) == len(set(sets)) >= 2  # every candidate once, whatever suggested it
    assert any("guided" in c["sources"] for c in trace["candidates"])
    assert any(set(c["sources"]) & set(BASELINES) for c in trace["candidates"])
    winner = min(trace["candidates"], key=lambda c: c["probe_loss"])
    assert plan.removed == winner["removed"] and winner["won"] and all(c["steps"] == 2 for c in trace["candidates"])
    losers = [c for c in trace["candidates"] if not c["won"]]
    assert trace["losers"]["steps"] == 2 * len(losers) and trace["losers"]["tokens"] == sum(c["tokens"] for c in losers)
    assert trace["losers"]["flops"] > 0 and all(not Path(c["folder"]).exists() for c in losers)
    assert all("healed best" in row["reason"] for row in plan.layers if not row["kept"])
    # A rerun with the same settings probes nothing again.
    monkeypatch.setattr(guided_heal, "probe", lambda *a: pytest.fail("probed again"))
    assert make_plan("guided-heal", inputs, 3).removed == plan.removed
    # The winner's healing continues its probe: the probe's two steps are two of its four.
    student, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    delete_layers(student, plan.keep)
    _, report = heal(student, None, tok, tiny_corpus, healing, tmp_path / "healed", plan.keep, progress=False,
                     resume_from=probe_folder(plan))
    assert report["continued_probe"] and report["steps"] == 4
