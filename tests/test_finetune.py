"""Fine-tuning a pretrained base into a tour teacher: through the one loop, resumable, reporting
what it learnt and how fast it trained; the pipeline's general-ability check against the base."""

import json
import subprocess
import sys

import pytest

from compress.general import general_kl, general_rows
from core.artifacts import TRAINING_FILE
from data.corpus import general_prompts
from models.load import load_model
from train.finetune import FinetuneConfig, finetune, matmul_peak

FIXTURE_POIS = "tests/fixtures/pois_small.jsonl"


def short(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"max_steps": 6, "batch_size": 4, "lr": 1e-3, "warmup": 2, "eval_every": 3,
                             "eval_samples": 8, "recall_samples": 4, "max_length": 256, "precision": "fp32", **kw})


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_short_fine_tune_learns_and_reports(tiny_llama_dir, tiny_corpus, tmp_path, method):
    out = tmp_path / method
    report = finetune(str(tiny_llama_dir), tiny_corpus, out, short(method=method, lr=1e-2 if method == "lora" else 1e-3),
                      FIXTURE_POIS, progress=False)
    assert report["steps"] == 6 and (out / "config.json").is_file() and (out / TRAINING_FILE).is_file()
    assert report["after"]["val_loss"] < report["before"]["val_loss"]  # it learnt from the corpus
    for when in ("before", "after"):
        assert {"fact_recall", "names_place", "repetition", "samples"} <= set(report[when])
    speed = report["throughput"]
    assert speed["tokens_per_s"] > 0 and 0 < speed["mfu"] < 1 and speed["matmul_peak_gflops"] > 0
    model, _ = load_model(str(out))  # a plain checkpoint: LoRA adapters merged
    assert not any("lora" in name for name, _ in model.named_parameters())
    again = finetune(str(tiny_llama_dir), tiny_corpus, out, short(method=method, lr=1e-2 if method == "lora" else 1e-3),
                     FIXTURE_POIS, progress=False)
    assert again == json.loads((out / TRAINING_FILE).read_text())  # finished: returned, not redone


def test_the_general_prompts_are_ours_and_many():
    prompts = general_prompts()
    assert len(prompts) >= 50 and all(p[0]["role"] == "user" for p in prompts)
    assert not any("sydney" in p[0]["content"].lower() for p in prompts)


def test_general_kl_is_zero_against_itself_and_positive_after_training(tiny_llama_dir, tiny_corpus, tmp_path):
    base, tokenizer = load_model(str(tiny_llama_dir))
    rows = general_rows(base, tokenizer, max_new_tokens=12)[:8]
    assert general_kl(base, base, tokenizer, rows)["kl"] == 0
    finetune(str(tiny_llama_dir), tiny_corpus, tmp_path / "ft", short(), FIXTURE_POIS, progress=False)
    tuned, _ = load_model(str(tmp_path / "ft"))
    assert general_kl(tuned, base, tokenizer, rows)["kl"] > 0


def test_the_matmul_peak_is_measured():
    assert matmul_peak(__import__("torch").float32, size=256, repeats=2) > 1e8


def test_cli_errors_are_named(tmp_path):
    done = subprocess.run([sys.executable, "-m", "train.finetune", "--model", str(tmp_path / "nothing"), "--data",
                           str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error:")
