"""The training loop: resumable, keyed, stopping early with the best weights, within a time limit.

A bigram table with dropout stands in for a language model: it trains in milliseconds and draws
random numbers every step, which a resume must reproduce."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.artifacts import BEST_FILE, CHECKPOINT_DIR
from train.loop import ForeignCheckpoint, LoopConfig, Task, discard_checkpoint, native_bf16, resolve_precision, train

VOCAB = 12
CONFIG = LoopConfig(steps=8, batch_size=4, lr=0.05, warmup=2, progress=False)


class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        """A causal LM's signature: `logits_to_keep` last positions (0: all), as transformers'."""
        hidden = self.drop(self.embed(input_ids))
        return SimpleNamespace(logits=self.head(hidden[:, -logits_to_keep:]))


def examples(n=20):
    """Count upward from a start token: the answer (from position 2) is predictable."""
    return [([(s + k) % VOCAB for k in range(5 + s % 4)], 2) for s in range(n)]


class Scripted(Task):
    """Validation scores read from a script; the weights at each validation are kept to compare."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), {}

    def validate(self, model):
        self.seen[len(self.seen)] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"score": self.scores[len(self.seen) - 1]}

    def score(self, metrics):
        return metrics["score"]


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("checkpoint", [CHECKPOINT_DIR, "checkpoint.pt"])
def test_a_run_resumed_from_its_checkpoint_ends_as_an_unbroken_one(tmp_path, checkpoint):
    config = replace(CONFIG, checkpoint=checkpoint)
    unbroken = train(Bigram(), Task(), examples(), 0, config, tmp_path / "a", key="k")
    assert unbroken.finished and unbroken.state.step == 8

    stopped = train(Bigram(), Task(), examples(), 0, replace(config, stop_after=3), tmp_path / "b", key="k")
    assert not stopped.finished and stopped.state.step == 3 and (tmp_path / "b" / checkpoint).exists()
    resumed = train(Bigram(), Task(), examples(), 0, config, tmp_path / "b", key="k")
    assert resumed.finished and resumed.state.step == 8
    assert same(weights(unbroken.model), weights(resumed.model))
    assert resumed.state.losses == unbroken.state.losses  # the loss curve goes on as if never stopped


def test_a_checkpoint_written_under_another_key_is_refused(tmp_path):
    train(Bigram(), Task(), examples(), 0, replace(CONFIG, stop_after=2, keyed_by="preset or corpus"), tmp_path, "k1")
    with pytest.raises(ForeignCheckpoint, match="belongs to a different preset or corpus; delete it"):
        train(Bigram(), Task(), examples(), 0, replace(CONFIG, keyed_by="preset or corpus"), tmp_path, "k2")


def test_validation_runs_every_n_steps_and_at_the_end_and_the_loss_curve_every_m(tmp_path):
    task = Scripted([1.0] * 5)
    result = train(Bigram(), task, examples(), 0, replace(CONFIG, steps=7, eval_every=3, log_every=2), tmp_path, "k")
    assert [v["step"] for v in result.state.validations] == [3, 6, 7]
    assert [step for step, _ in result.state.losses] == [2, 4, 6, 7]
    assert result.report()["validations"] == result.state.validations and result.report()["precision"] == "fp32"


def test_early_stopping_gives_back_the_best_weights(tmp_path):
    # Steps 0, 2, 4, 6 validated: best at step 2, then two validations without a better score.
    task = Scripted([3.0, 1.0, 2.0, 2.0, 2.0])
    result = train(Bigram(), task, examples(), 0, replace(CONFIG, eval_every=2, patience=2), tmp_path, "k")
    assert result.state.stopped.startswith("early stopping") and result.state.step == 6
    assert result.state.best_step == 2 and [v["step"] for v in result.state.validations] == [0, 2, 4, 6]
    assert same(weights(result.model), task.seen[1])
    assert (tmp_path / BEST_FILE).is_file()
    discard_checkpoint(tmp_path, CONFIG)
    assert not (tmp_path / BEST_FILE).exists() and not (tmp_path / CHECKPOINT_DIR).exists()


def test_the_time_limit_ends_training_with_a_validated_checkpointed_model(tmp_path):
    task = Scripted([1.0])
    result = train(Bigram(), task, examples(), 0, replace(CONFIG, max_minutes=1e-9), tmp_path, "k")
    assert result.finished and result.state.step == 1 and result.state.stopped == "time limit of 1e-09 minutes"
    assert [v["step"] for v in result.state.validations] == [1]
    assert (tmp_path / CHECKPOINT_DIR / "train_state.json").is_file()


def test_bf16_autocasts_the_forward_and_fp32_the_default_does_not(tmp_path):
    class Records(Task):
        def loss(self, model, batch):
            logits = model(input_ids=batch["input_ids"]).logits
            self.dtype = logits.dtype
            return super().loss(model, batch)

    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        task = Records()
        config = replace(CONFIG, steps=2, precision=precision)
        result = train(Bigram(), task, examples(), 0, config, tmp_path / precision, "k")
        assert task.dtype == dtype and result.precision == precision
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        replace(CONFIG, precision="fp16")


def test_a_cpu_trains_with_eager_attention_to_the_same_loss_and_the_model_keeps_its_own_kernel(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.loop import resolve_attention

    assert resolve_attention("auto", torch.device("cpu")) == "eager"
    assert resolve_attention("auto", torch.device("cuda")) is None and resolve_attention("sdpa", torch.device("cpu")) == "sdpa"

    class Records(Task):
        def loss(self, model, batch):
            self.kernel = model.config._attn_implementation
            return super().loss(model, batch)

    def llama():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                            attn_implementation="sdpa"))

    losses = {}
    for attention in ("auto", "sdpa"):
        task, model = Records(), llama()
        result = train(model, task, examples(), 0, replace(CONFIG, steps=4, attention=attention), tmp_path / attention, "k")
        assert task.kernel == ("eager" if attention == "auto" else "sdpa")
        assert result.model.config._attn_implementation == "sdpa"  # saved and served as it came
        losses[attention] = [loss for _, loss in result.state.losses]
    assert losses["auto"] == pytest.approx(losses["sdpa"], abs=1e-5)
