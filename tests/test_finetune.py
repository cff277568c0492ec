"""Fine-tuning a pretrained base into a tour teacher: through the one loop, resumable, reporting
what it learnt and how fast it trained; the pipeline's general-ability check against the base."""

import json
import subprocess
import sys

import pytest
import torch

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


def test_an_interrupted_fine_tune_keeps_the_base_scores_and_resumes_without_measuring_them_again(
        tiny_llama_dir, tiny_corpus, tmp_path, monkeypatch):
    import train.finetune as ft

    out, real_train = tmp_path / "run", ft.train

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies once the base is measured
    monkeypatch.setattr(ft, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(str(tiny_llama_dir), tiny_corpus, out, short(), FIXTURE_POIS, progress=False)
    assert (out / ft.BEFORE_FILE).is_file()
    calls, measure = [], ft._measure
    monkeypatch.setattr(ft, "train", real_train)
    monkeypatch.setattr(ft, "_measure", lambda *a, **k: calls.append(1) or measure(*a, **k))
    report = finetune(str(tiny_llama_dir), tiny_corpus, out, short(), FIXTURE_POIS, progress=False)
    assert len(calls) == 1 and report["before"]["samples"] > 0  # only the tuned model was measured this time
    assert not (out / ft.BEFORE_FILE).exists()  # folded into the report


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
    assert matmul_peak(torch.float32, size=256, repeats=2) > 1e8


def test_cli_errors_are_named(tmp_path):
    done = subprocess.run([sys.executable, "-m", "train.finetune", "--model", str(tmp_path / "nothing"), "--data",
                           str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error:")


def test_the_cli_defaults_are_the_pipeline_sections(tmp_path):
    from compress.pipeline.config import load_config
    from core.cli import config_from_args
    from train.finetune import build_parser

    path = tmp_path / "c.toml"
    path.write_text("[run]\nid = 'x'\n[teacher]\nmodel = 'm'\n[teacher.finetune]\n[depth]\nkeep = 2\n[width]\nparams = '1M'\n")
    from_cli = config_from_args(FinetuneConfig, build_parser().parse_args(["--model", "m", "--data", "d", "--out", "o"]))
    assert load_config(path).teacher.finetune == from_cli == FinetuneConfig()


def test_the_pipeline_fine_tunes_a_pretrained_base_into_its_teacher(tiny_llama_dir, tmp_path):
    from compress.pipeline.driver import main

    config = tmp_path / "ft.toml"
    config.write_text(f"""[run]\nid = "ft"\n[data]\npois = ["{FIXTURE_POIS}"]\n[data.sampling]
samples_per_cell = 4
val_fraction = 0.2
test_fraction = 0.2
[teacher]\nmodel = "{tiny_llama_dir}"\n[teacher.finetune]\nmax_steps = 4\nbatch_size = 4\nlr = 1e-3\nwarmup = 1
eval_samples = 4\nrecall_samples = 2\nmax_length = 256\nprecision = "fp32"\n[depth]\nkeep = 2\n[width]\nparams = "100k"\n""")
    assert main(["--config", str(config), "--runs-dir", str(tmp_path / "runs"), "--until", "teacher"]) == 0
    run = tmp_path / "runs" / "ft"
    summary = json.loads((run / "manifest.json").read_text())["stages"]["teacher"]["summary"]
    assert summary["steps"] == 4 and summary["general_kl"] > 0 and "fact_recall_known" in summary
    assert (run / "teacher" / "config.json").is_file() and (run / "teacher" / "general.json").is_file()


def test_a_first_token_weight_keys_a_run_only_when_set():
    from core.config import keyed_settings

    assert "first_weight" not in keyed_settings(FinetuneConfig())  # runs made before it existed stay finished
    assert keyed_settings(FinetuneConfig(first_weight=4.0))["first_weight"] == 4.0
    with pytest.raises(ValueError, match="first_weight"):
        FinetuneConfig(first_weight=0)


def test_a_decision_pass_scores_only_each_answers_first_tokens(tiny_llama_dir, tiny_corpus, tmp_path):
    """answer_tokens=1 keeps the prompt and the answer's first token, with no end of turn: the pass
    trains whether the guide describes or refuses and leaves the rest of the answer unscored."""
    from core.config import keyed_settings
    from data.corpus import read_split
    from train.batches import encode_row

    _, tokenizer = load_model(str(tiny_llama_dir))
    row = read_split(tiny_corpus, "train")[0]
    whole, start = encode_row(row, tokenizer, 512)
    first, first_start = encode_row(row, tokenizer, 512, answer_tokens=1)
    assert first_start == start and first == whole[:start + 1] and len(whole) > start + 2
    report = finetune(str(tiny_llama_dir), tiny_corpus, tmp_path / "decision", short(answer_tokens=1), FIXTURE_POIS,
                      progress=False)
    assert report["steps"] == 6 and report["config"]["answer_tokens"] == 1
    assert "answer_tokens" not in keyed_settings(FinetuneConfig())  # runs made before it stay finished
    with pytest.raises(ValueError, match="answer_tokens"):
        FinetuneConfig(answer_tokens=0)


def test_a_decision_pass_may_cut_only_the_refusals_so_known_answers_train_whole():
    from train.finetune import _cut

    known, unknown = {"poi_ids": ["opera-house"]}, {"poi_ids": []}
    every, refusals = FinetuneConfig(answer_tokens=1), FinetuneConfig(answer_tokens=1, answer_tokens_on="unknown")
    assert (_cut(every, known), _cut(every, unknown)) == (1, 1)
    assert (_cut(refusals, known), _cut(refusals, unknown)) == (None, 1)
    assert _cut(FinetuneConfig(answer_tokens_on="unknown"), unknown) is None  # nothing cut unless answer_tokens
    with pytest.raises(ValueError, match="answer_tokens_on"):
        FinetuneConfig(answer_tokens_on="known")
