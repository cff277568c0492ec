"""Healing: the losses, the rotation, and a student that gets closer to its teacher and survives a kill."""

import json

import pytest
import torch

from compress import heal as heal_module
from compress.heal import HealConfig, cut_pairs, heal, procrustes, restrict_scores, schedule_sizes
from compress.heal_config import HEAL_LOSSES, with_loss
from compress.layers import delete_layers
from compress.plots import plot_heal_curves
from compress.width import importance_scores, prune_width
from models.load import LoadOptions, load_model
from train.losses import kd_loss, layer_pairs

FAST = dict(epochs=1, max_steps=6, eval_every=2, batch_size=4, eval_samples=4, warmup=1, lr=3e-3)


def pruned_student(micro_teacher, hidden=48):
    student, tokenizer = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    delete_layers(student, [0, 1, 3])
    kept = prune_width(student, importance_scores(student, "magnitude"), ffn=128, hidden=hidden)
    return student, tokenizer, kept


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_kd_loss_is_zero_only_when_the_distributions_agree_and_ignores_unmasked_positions():
    logits = torch.randn(2, 5, 11)
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert kd_loss(logits, logits, mask, 2.0) == pytest.approx(0.0, abs=1e-6)
    other = logits.clone()
    other[~mask] = torch.randn_like(other[~mask])  # differences where nothing is scored
    assert kd_loss(logits, other, mask, 2.0) == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.randn(2, 5, 11), mask, 2.0) > 0.01


def test_procrustes_recovers_a_hidden_rotation():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    w = q[:, :6].T  # [6, 8], orthonormal rows: a narrower student's space inside the teacher's
    student = torch.randn(500, 6, generator=g)
    fitted = procrustes(student, student @ w)
    assert torch.allclose(fitted, w, atol=1e-4)


def test_layer_pairs_follow_the_depth_plan_and_meet_at_the_final_norm():
    assert layer_pairs(3, 4, [0, 1, 3]) == [(1, 1), (2, 2), (3, 4)]
    assert layer_pairs(2, 4, [0, 2]) == [(1, 1), (2, 4)]
    with pytest.raises(ValueError, match="3 entries"):
        layer_pairs(2, 4, [0, 1, 3])


@pytest.mark.parametrize("method", ["kd", "lora"])
def test_healing_brings_a_pruned_student_closer_to_its_teacher(micro_teacher, tiny_corpus, tmp_path, method):
    teacher, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    student, tokenizer, kept = pruned_student(micro_teacher)
    config = HealConfig(method=method, hidden_weight=0.5, **{**FAST, "lr": 1e-2 if method == "lora" else 3e-3})
    healed, report = heal(student, teacher, tokenizer, tiny_corpus, config, tmp_path, [0, 1, 3], kept["hidden"],
                          progress=False)
    assert report["after"]["kl"] < report["before"]["kl"]
    assert [v["step"] for v in report["validations"]] == [0, 2, 4, 6]
    assert report["steps"] == 6 and report["stopped"] is None
    reloaded, _ = load_model(str(tmp_path), LoadOptions(dtype="float32"))  # a plain checkpoint, adapters merged
    assert not any("lora" in k for k in reloaded.state_dict())
    ids = torch.tensor([tokenizer("Circular Quay at dusk")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, healed(input_ids=ids).logits, atol=1e-5)
    if method == "lora":
        assert report["trainable_parameters"] < sum(p.numel() for p in reloaded.parameters()) / 2
    # A rerun finds the finished healing and does not train again.
    again, second = heal(pruned_student(micro_teacher)[0], teacher, tokenizer, tiny_corpus, config, tmp_path,
                         [0, 1, 3], kept["hidden"], progress=False)
    assert second == json.loads((tmp_path / "heal.json").read_text()) and second["seconds"] == report["seconds"]


def test_fine_tuning_needs_no_teacher_and_distillation_does(micro_teacher, tiny_corpus, tmp_path):
    student, tokenizer, _ = pruned_student(micro_teacher)
    _, report = heal(student, None, tokenizer, tiny_corpus, HealConfig(method="finetune", **FAST), tmp_path / "ft",
                     progress=False)
    assert report["after"]["perplexity"] < report["before"]["perplexity"]
    # with no teacher there is nothing to agree with: no KL or top-1 is reported, rather than a perfect 0 / 1
    assert "kl" not in report["after"] and "top1_agreement" not in report["after"]
    assert plot_heal_curves({"finetune": report}, tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="needs a teacher"):
        heal(student, None, tokenizer, tiny_corpus, HealConfig(**FAST), tmp_path / "kd", progress=False)
    with pytest.raises(ValueError, match="unknown healing method"):
        HealConfig(method="magic")


def test_a_killed_healing_resumes_to_the_weights_of_an_unbroken_one(micro_teacher, tiny_corpus, tmp_path, monkeypatch):
    teacher, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    config = HealConfig(**FAST)
    student, tokenizer, _ = pruned_student(micro_teacher, hidden=64)
    unbroken, _ = heal(student, teacher, tokenizer, tiny_corpus, config, tmp_path / "a", progress=False)

    real, calls = heal_module._validate, {"n": 0}

    def dies_on_third_validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # steps 0 and 2 validated and checkpointed; killed at step 4
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(heal_module, "_validate", dies_on_third_validation)
    student, tokenizer, _ = pruned_student(micro_teacher, hidden=64)
    with pytest.raises(KeyboardInterrupt):
        heal(student, teacher, tokenizer, tiny_corpus, config, tmp_path / "b", progress=False)
    saved = json.loads((tmp_path / "b" / "checkpoint" / "heal_state.json").read_text())
    assert saved["state"]["step"] == 2 and not (tmp_path / "b" / "config.json").exists()
    monkeypatch.setattr(heal_module, "_validate", real)
    student, tokenizer, _ = pruned_student(micro_teacher, hidden=64)
    resumed, report = heal(student, teacher, tokenizer, tiny_corpus, config, tmp_path / "b", progress=False)
    assert report["steps"] == 6 and not (tmp_path / "b" / "checkpoint").exists()
    a, b = weights(unbroken), weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_early_stopping_keeps_the_best_weights(micro_teacher, tiny_corpus, tmp_path):
    teacher, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    student, tokenizer, _ = pruned_student(micro_teacher)
    before = weights(student)
    config = HealConfig(**{**FAST, "lr": 5.0, "warmup": 1, "patience": 1, "grad_clip": 0.0})  # diverges at once
    healed, report = heal(student, teacher, tokenizer, tiny_corpus, config, tmp_path, progress=False)
    assert report["stopped"].startswith("early stopping") and report["steps"] == 2
    assert report["best_step"] == 0 and report["after"] == report["before"]
    after = weights(healed)
    assert all(torch.allclose(before[k], after[k]) for k in before)


def test_schedule_sizes_step_toward_the_target_and_end_on_it(micro_teacher):
    student, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    steps = schedule_sizes(student.config, {"ffn": 96, "hidden": 32}, [0.5, 0.25])
    assert steps == [{"ffn": 168, "hidden": 56}, {"ffn": 144, "hidden": 48}, {"ffn": 96, "hidden": 32}]
    with pytest.raises(ValueError, match="strictly between"):
        schedule_sizes(student.config, {"ffn": 96}, [1.0])


def test_restricted_scores_prune_a_pruned_model_as_the_original_scores_would(micro_teacher):
    a, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    b, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    scores = importance_scores(a, "random", seed=3)
    kept = prune_width(a, scores, ffn=160, hidden=56, heads=2)
    prune_width(a, restrict_scores(scores, kept), ffn=96, hidden=40)
    prune_width(b, scores, ffn=96, hidden=40, heads=2)  # in one go
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_hidden_state_loss_at_the_cuts_meets_the_state_the_cut_layers_would_have_made():
    # hidden_states[k] is the input of layer k; the last index is the final, normed output.
    assert cut_pairs([0, 1, 3], 4) == [(2, 3)]  # layer 2 cut: the input of teacher layer 3 is the target
    assert cut_pairs([0, 2], 4) == [(1, 2), (2, 4)]  # layer 1 cut, and layer 3 at the top: the outputs meet
    assert cut_pairs([1, 2, 3], 4) == [(0, 1)]  # the first layer cut: the embeddings stand in for its output
    assert cut_pairs([0, 1, 2, 3], 4) == []


def test_every_healing_loss_trains_at_equal_steps_on_the_same_batches(micro_teacher, tiny_corpus, tmp_path):
    teacher, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    config = HealConfig(**{**FAST, "max_steps": 2, "eval_every": 2, "patience": 0})
    reports = {}
    for loss in HEAL_LOSSES:
        student, tokenizer = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
        delete_layers(student, [0, 1, 3])
        _, reports[loss] = heal(student, teacher, tokenizer, tiny_corpus, with_loss(config, loss), tmp_path / loss,
                                [0, 1, 3], progress=False)
    assert {r["steps"] for r in reports.values()} == {2} and len({r["tokens"] for r in reports.values()}) == 1
    assert len({r["losses"][0][1] for r in reports.values()}) == len(HEAL_LOSSES)  # five different objectives
    assert reports["ce"]["config"]["method"] == "finetune" and reports["kl+cuts"]["config"]["hidden_at"] == "cuts"
    with pytest.raises(ValueError, match="unknown healing loss"):
        with_loss(config, "mse")
    student, tokenizer = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    with pytest.raises(ValueError, match="layer map"):
        heal(student, teacher, tokenizer, tiny_corpus, with_loss(config, "kl+cuts"), tmp_path / "x", progress=False)


def test_a_probe_is_the_first_steps_of_the_healing_that_continues_it(micro_teacher, tiny_corpus, tmp_path):
    config = HealConfig(**{**FAST, "method": "finetune", "patience": 0})

    def student():
        model, tokenizer = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
        return delete_layers(model, [0, 2, 3]), tokenizer

    model, tokenizer = student()
    unbroken, full = heal(model, None, tokenizer, tiny_corpus, config, tmp_path / "unbroken", progress=False)
    model, tokenizer = student()
    _, probe = heal(model, None, tokenizer, tiny_corpus, config, tmp_path / "probe", progress=False, stop_after=2)
    assert not probe["finished"] and probe["steps"] == 2 and (tmp_path / "probe" / "probe.json").is_file()
    assert not (tmp_path / "probe" / "config.json").exists()  # no model: a probe is not a healing
    assert probe["tokens"] < full["tokens"]
    model, tokenizer = student()
    continued, report = heal(model, None, tokenizer, tiny_corpus, config, tmp_path / "continued", progress=False,
                             resume_from=tmp_path / "probe")
    assert report["continued_probe"] and report["steps"] == 6 and report["tokens"] == full["tokens"]
    assert report["losses"][:2] == probe["losses"]  # its first two steps are the probe's
    a, b = weights(unbroken), weights(continued)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # Another healing (another seed) does not take the probe's steps as its own.
    model, tokenizer = student()
    _, other = heal(model, None, tokenizer, tiny_corpus, HealConfig(**{**FAST, "method": "finetune", "patience": 0,
                                                                      "seed": 1}),
                    tmp_path / "other", progress=False, resume_from=tmp_path / "probe")
    assert not other["continued_probe"]


def test_without_early_stopping_the_curve_runs_from_step_zero_and_the_last_weights_stay(
        micro_teacher, tiny_corpus, tmp_path):
    from pathlib import Path

    from compress.heal_curve import HealCurve

    student, tokenizer = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    delete_layers(student, [0, 1, 3])
    curve = HealCurve.open(tiny_corpus, tokenizer, Path(__file__).parent / "fixtures" / "pois_small.jsonl")
    config = HealConfig(**{**FAST, "method": "finetune", "patience": 0})
    start = curve.measure(student)
    healed, report = heal(student, None, tokenizer, tiny_corpus, config, tmp_path, progress=False, curve=curve)
    assert [v["step"] for v in report["validations"]] == [0, 2, 4, 6]
    assert all({"answer_logprob", "fact_accuracy"} <= set(v) for v in report["validations"])
    assert report["after"] == report["validations"][-1] and report["curve"] == curve.key
    # the first point is the student before healing, the last the weights it ends with
    assert report["validations"][0]["answer_logprob"] == pytest.approx(start["answer_logprob"])
    assert report["validations"][-1]["answer_logprob"] == pytest.approx(curve.measure(healed)["answer_logprob"])
    assert report["validations"][-1]["answer_logprob"] != start["answer_logprob"]
