"""The evaluation harness measures what it says: teacher-forced agreement with the teacher,
the quality of generated answers, and a report of both."""

import json
import math
from pathlib import Path

import pytest
import torch

from compress.calibration import ForcedTotals, answer_logprobs, answer_targets, encode_rows, split_rows
from compress.depth import delete_layers
from compress.evaluate import EvalConfig, Evaluation, evaluate, forced_metrics
from compress.evaluate import main as evaluate_main
from data.corpus import read_split
from models.checkpoint import save_model_dir
from models.load import LoadOptions, load_model
from models.recall import Scorer, repetition_rate

FIXTURE_POIS = Path(__file__).parent / "fixtures" / "pois_small.jsonl"


def test_repetition_rate_counts_repeated_word_trigrams():
    assert repetition_rate("The bridge opened in 1932 after eight years of work.") == 0
    assert repetition_rate("see the bridge see the bridge see the bridge") == pytest.approx(1 - 3 / 7)
    assert repetition_rate("") == 0 and repetition_rate("two words") == 0


def test_calibration_and_known_places_never_share_a_cell(tiny_corpus):
    train = read_split(tiny_corpus, "train")
    calibration, known = split_rows(tiny_corpus, "calibration"), split_rows(tiny_corpus, "known")
    assert len(calibration) + len(known) == len(train)
    assert not {r["plus_code"] for r in calibration} & {r["plus_code"] for r in known}
    assert split_rows(tiny_corpus, "known", 3, seed=1) == split_rows(tiny_corpus, "known", 3, seed=1)
    assert len(split_rows(tiny_corpus, "test", 2)) == 2


def test_scorer_checks_facts_place_names_and_style(tiny_corpus):
    scorer = Scorer(FIXTURE_POIS)
    rows = read_split(tiny_corpus, "train")
    row = next(r for r in rows if r["style"] == "brief")
    perfect = scorer.score(row["target"], row)
    assert perfect["facts"][0] == perfect["facts"][1] > 0
    assert perfect["names_place"] and not perfect["wrong_places"] and perfect["length_ok"] and perfect["style_ok"]

    facts = " ".join(f for i in row["poi_ids"] for f in scorer.pois[i].facts)
    # A neighbour that this place's own facts mention is allowed; any other place is not.
    other = next(p for p in scorer.pois.values() if p.plus_code != row["plus_code"] and p.name not in facts)
    wrong = scorer.score(f"This is {other.name}, a fine place to stand.", row)
    assert wrong["wrong_places"] == [other.name] and wrong["facts"][0] == 0 and not wrong["names_place"]
    assert not scorer.score("word " * 200, row)["length_ok"]


def test_teacher_forcing_matches_the_models_own_loss_and_is_zero_against_itself(micro_teacher, tiny_corpus):
    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    rows = read_split(tiny_corpus, "val")[:3]
    sequences = encode_rows(rows, tok)
    itself = forced_metrics(model, model, sequences, batch_size=2)
    assert itself["kl"] == 0 and itself["top1_agreement"] == 1

    # The same perplexity as transformers' own loss over the answer tokens, sequence by sequence.
    nll = tokens = 0
    for seq in sequences:
        labels = torch.tensor([[-100] * seq.answer_start + seq.ids[seq.answer_start:]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([seq.ids]), labels=labels).loss
        nll, tokens = nll + float(loss) * seq.answer_tokens, tokens + seq.answer_tokens
    assert itself["tokens"] == tokens
    assert itself["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)

    # Right padding inside a batch changes nothing: batch of 3 equals three batches of 1.
    totals = ForcedTotals()
    for indices, batch in answer_logprobs(model, sequences, batch_size=1):
        totals.add(batch[0], batch[0], answer_targets(sequences[indices[0]], "cpu"))
    assert totals.means()["perplexity"] == pytest.approx(itself["perplexity"], rel=1e-5)


@pytest.fixture(scope="module")
def student(micro_teacher, tmp_path_factory):
    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    delete_layers(model, [0, 3])
    return save_model_dir(model, tok, tmp_path_factory.mktemp("student"))


def test_the_cli_reports_teacher_and_students_and_resumes(micro_teacher, tiny_corpus, student, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    argv = ["--teacher", str(micro_teacher), "--student", f"half={student}", "--data", str(tiny_corpus), "--out", str(out),
            "--split", "test", "--split", "known", "--limit", "4", "--max-new-tokens", "24", "--latency-queries", "1",
            "--pois", str(FIXTURE_POIS), "--device", "cpu"]
    assert evaluate_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    teacher, half = metrics["models"]["teacher"], metrics["models"]["half"]
    assert (teacher["layers"], half["layers"]) == (4, 2) and half["parameters"] < teacher["parameters"]
    for split in ("test", "known"):
        assert teacher["splits"][split]["kl"] == 0 and half["splits"][split]["kl"] > 0
        assert half["splits"][split]["samples"] == 4
        for key in ("perplexity", "top1_agreement", "fact_recall", "wrong_place", "style_ok", "repetition"):
            assert math.isfinite(half["splits"][split][key])
        assert (out / f"metrics_{split}.png").read_bytes()[:4] == b"\x89PNG"
        assert len((out / "generations" / f"half.{split}.jsonl").read_text().splitlines()) == 4
    assert half["latency"]["latency_s"] > 0 and half["latency"]["tokens_per_s"] > 0
    report = (out / "report.md").read_text()
    assert "| half | 2 |" in report and "## Split `known`" in report

    # A rerun with the same settings measures nothing again.
    monkeypatch.setattr(Evaluation, "measure", lambda *a, **k: pytest.fail("re-measured a finished model"))
    assert evaluate_main(argv) == 0


def test_students_with_another_vocabulary_are_refused(micro_teacher, tiny_corpus, tmp_path):
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(micro_teacher)
    other = tmp_path / "other"
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8)).save_pretrained(other)
    tok.save_pretrained(other)
    cfg = EvalConfig(("test",), 2, 8, latency_queries=0)
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate(Evaluation.open(str(micro_teacher), tiny_corpus, cfg, FIXTURE_POIS), {"other": str(other)},
                 tmp_path / "eval", progress=False)
