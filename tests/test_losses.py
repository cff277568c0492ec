"""The training losses: what each scores, and what it ignores."""

import pytest
import torch
import torch.nn.functional as F

from train.losses import HiddenProjection, answer_ce, hidden_loss, kd_loss, scored_from


def tiny_lm(family: str):
    """A one-layer random causal LM of 40 tokens, Qwen3 or Llama."""
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                      num_hidden_layers=1, num_attention_heads=2,
                                                      num_key_value_heads=1, head_dim=8)
    return getattr(transformers, f"{family}ForCausalLM")(config)


def test_answer_ce_is_bit_for_bit_the_loss_transformers_computes():
    model = tiny_lm("Qwen3")
    ids = torch.randint(0, 40, (2, 7))
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt
    out = model(input_ids=ids, labels=labels)
    assert torch.equal(answer_ce(out.logits, labels), out.loss)


def test_the_training_loss_skips_prompt_logits_and_is_the_loss_over_all_of_them():
    from train.loop import Task

    model = tiny_lm("Llama")
    ids = torch.randint(0, 40, (2, 9))
    labels = ids.clone()
    labels[0, :5], labels[1, :4] = -100, -100  # prompts of 5 and 4 tokens: logits kept from position 3
    assert scored_from(labels) == 3 and scored_from(torch.full((1, 4), -100)) == 0
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    assert Task().loss(model, batch).item() == pytest.approx(model(input_ids=ids, labels=labels).loss.item(), rel=1e-6)


def test_answer_ce_scores_only_the_predictions_of_answer_tokens():
    logits = torch.randn(1, 5, 9)
    labels = torch.tensor([[-100, -100, 4, 2, 7]])  # positions 1, 2, 3 predict the answer
    changed = logits.clone()
    changed[0, [0, 4]] = torch.randn(2, 9)  # position 0 predicts prompt, position 4 predicts nothing
    assert answer_ce(changed, labels) == answer_ce(logits, labels)
    expected = F.cross_entropy(logits[0, 1:4], labels[0, 2:])
    assert answer_ce(logits, labels) == pytest.approx(expected.item())


def test_a_first_token_weight_counts_each_answers_decision_that_many_times():
    logits = torch.randn(2, 6, 9)
    labels = torch.tensor([[-100, -100, 4, 2, 7, -100],    # answer from position 2: position 1 decides
                           [-100, -100, -100, 3, 5, 1]])   # answer from position 3: position 2 decides
    per_token = {(r, p): F.cross_entropy(logits[r, p], labels[r, p + 1]).item()
                 for r, p in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (1, 4)]}
    firsts = per_token[(0, 1)] + per_token[(1, 2)]
    expected = (sum(per_token.values()) - firsts + 5 * firsts) / (6 + 2 * 4)
    assert answer_ce(logits, labels, first_weight=5.0).item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(answer_ce(logits, labels, first_weight=1.0), answer_ce(logits, labels))
    unlabelled = torch.cat([labels, torch.full((1, 6), -100)])  # a row with no answer weighs nothing
    assert answer_ce(torch.cat([logits, torch.randn(1, 6, 9)]), unlabelled, 5.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_of_identical_logits_is_zero_and_at_temperature_one_it_is_the_kl_divergence():
    student, teacher = torch.randn(2, 4, 10), torch.randn(2, 4, 10)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert kd_loss(teacher, teacher, mask, 3.0) == pytest.approx(0.0, abs=1e-6)
    kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="none")
    assert kd_loss(student, teacher, mask, 1.0) == pytest.approx(kl.sum(-1).mean().item(), rel=1e-5)


def test_kd_carries_the_temperature_squared_so_its_gradient_keeps_its_scale():
    teacher = torch.randn(1, 3, 10)
    mask = torch.ones(1, 3, dtype=torch.bool)
    scales = []
    for t in (4.0, 8.0):
        student = torch.zeros(1, 3, 10, requires_grad=True)
        kd_loss(student, teacher * t, mask, t).backward()  # the same softened distributions at each T
        scales.append(student.grad.norm().item())
    assert scales[1] == pytest.approx(2 * scales[0], rel=1e-4)  # the T^2 / T of the gradient: linear in T


def test_hidden_loss_is_relative_to_the_teachers_energy_and_ignores_masked_tokens():
    teacher = [torch.randn(2, 5, 6) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    pairs = [(1, 1), (2, 2)]
    assert hidden_loss(teacher, teacher, pairs, None, mask) == pytest.approx(0.0, abs=1e-7)
    zeros = [torch.zeros_like(t) for t in teacher]
    assert hidden_loss(zeros, teacher, pairs, None, mask) == pytest.approx(1.0)
    noisy = [t.clone() for t in teacher]
    for t in noisy:
        t[~mask] = 100.0
    assert hidden_loss(noisy, teacher, pairs, None, mask) == pytest.approx(0.0, abs=1e-7)


def test_the_projection_starts_as_the_channel_selection_pruning_made():
    kept = torch.tensor([4, 0, 2])  # teacher channels a hidden-size pruning kept; the student holds them in order
    teacher = torch.randn(7, 6)
    projected = HiddenProjection(3, 6, kept)(teacher[:, kept.sort().values])
    dropped = [1, 3, 5]
    assert torch.equal(projected[:, kept], teacher[:, kept]) and not projected[:, dropped].any()
