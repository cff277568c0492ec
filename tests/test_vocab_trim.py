"""Exact vocabulary trimming (compress.vocab): a tiny Llama with a SmolLM2-style tokenizer, trimmed
to what one split of the corpus needs, tokenizes that split as before in transformers and in
llama.cpp, answers as before, and still spells any text."""

import json
import shutil

import pytest
import torch
from gguf import GGUFReader

from compress.vocab import (
    BYTE_TOKENS,
    ROUND_TRIP_PROBES,
    VOCAB_PLAN_FILE,
    TrimPlan,
    VocabConfig,
    build_parser,
    corpus_texts,
    greedy_agreement,
    llama_cpp_round_trip_failures,
    main,
    mismatches,
    plan_trim,
    read_plan,
    round_trip_failures,
    template_texts,
    token_ids,
    trim_checkpoint,
    trim_model,
    trimmed_spec,
    trimmed_tokenizer,
)
from core.cli import config_from_args
from data.corpus import read_split
from export.gguf import export_gguf
from models.checkpoint import save_model_dir
from models.generate import generate_batch
from models.load import load_model
from models.pretrained import llama_cpp_token_ids
from train.batches import encode_row

SPLIT = ("test",)  # the tokenizer learnt every split; keeping one leaves tokens to drop
@pytest.fixture(scope="module")
def trimmed(tiny_llama_dir, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "trimmed"
    report = trim_checkpoint(tiny_llama_dir, tiny_corpus, out, VocabConfig(splits=SPLIT))
    return tiny_llama_dir, out, read_plan(out), report


@pytest.fixture(scope="module")
def ggufs(trimmed, tmp_path_factory):
    original, out, _, _ = trimmed
    folder = tmp_path_factory.mktemp("vocab-gguf")
    return tuple(export_gguf(d, folder / f"{name}.gguf", "f32", progress=False).out
                 for name, d in (("original", original), ("trimmed", out)))


def texts_of(corpus, tokenizer):
    return corpus_texts(corpus, tokenizer, SPLIT) + template_texts(tokenizer)


def test_the_trimmed_tokenizer_tokenizes_every_corpus_text_as_before_renumbered(trimmed, tiny_corpus):
    original, out, plan, report = trimmed
    _, before = load_model(str(original))
    _, after = load_model(str(out))
    texts = texts_of(tiny_corpus, before)
    assert report["tokens"]["after"] < report["tokens"]["before"]  # something was dropped
    assert token_ids(after, texts) == [plan.mapped(ids) for ids in token_ids(before, texts)]
    for row in read_split(tiny_corpus, "test"):  # as training encodes a row
        old, start = encode_row(row, before, 10_000)
        assert encode_row(row, after, 10_000) == (plan.mapped(old), start)


def test_llama_cpp_tokenizes_the_trimmed_gguf_as_the_original_renumbered(trimmed, ggufs, tiny_corpus):
    original, out, plan, _ = trimmed
    _, after = load_model(str(out))
    texts = texts_of(tiny_corpus, after)
    old, new = (llama_cpp_token_ids(path, texts) for path in ggufs)
    assert new == [plan.mapped(ids) for ids in old]
    assert new == token_ids(after, texts)


def test_merges_stay_consistent_and_every_kept_token_keeps_its_ancestry(trimmed):
    original, out, plan, report = trimmed
    before = json.loads((original / "tokenizer.json").read_text())["model"]
    after = json.loads((out / "tokenizer.json").read_text())["model"]
    kept = set(after["vocab"])
    merges = [tuple(m) for m in after["merges"]]
    assert all(a in kept and b in kept and a + b in kept for a, b in merges)
    # every merge of the original that makes a kept token stays, in the original's order
    makes_kept = [tuple(m) for m in before["merges"] if "".join(m) in kept]
    assert merges == makes_kept
    assert 0 < report["tokens"]["merges_after"] < report["tokens"]["merges_before"]
    assert set(BYTE_TOKENS) <= kept and report["tokens"]["ancestors"] > 0
    assert sorted(after["vocab"].values()) == list(range(len(kept)))


def test_without_the_merge_ancestors_bpe_takes_another_path(trimmed, tiny_corpus):
    """Why ancestors stay: keep only the tokens the corpus ends with, and some words no longer
    reach them."""
    original, _, plan, _ = trimmed
    _, before = load_model(str(original))
    spec = json.loads(before.backend_tokenizer.to_str())
    texts = texts_of(tiny_corpus, before)
    needed = {i for ids in token_ids(before, texts) for i in ids} | set(before.added_tokens_decoder)
    full = plan_trim(spec, needed)
    vocab = spec["model"]["vocab"]
    leaves = sorted(needed | {vocab[b] for b in BYTE_TOKENS})
    names = {t for t, i in vocab.items() if i in set(leaves)}
    merges = [m for m in spec["model"]["merges"] if m[0] in names and m[1] in names and "".join(m) in names]
    bare = TrimPlan(leaves, merges, {})
    assert len(bare.kept) < len(full.kept)
    assert mismatches(before, trimmed_tokenizer(before, bare), bare, texts)
    assert not mismatches(before, trimmed_tokenizer(before, full), full, texts)


def test_the_trimmed_checkpoint_is_a_standard_one(trimmed, ggufs):
    original, out, plan, report = trimmed
    model, after = load_model(str(out))
    _, before = load_model(str(original))
    size = report["tokens"]["after"]
    assert model.config.vocab_size == len(after) == model.get_input_embeddings().weight.shape[0] == size
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    for name in ("eos_token_id", "pad_token_id"):
        old, new = getattr(before, name), getattr(model.config, name)
        assert after.convert_ids_to_tokens(new) == before.convert_ids_to_tokens(old)
        assert getattr(model.generation_config, name) == new
    assert after.chat_template == before.chat_template
    assert after.backend_tokenizer.pre_tokenizer.__getstate__() == before.backend_tokenizer.pre_tokenizer.__getstate__()
    reader = GGUFReader(ggufs[1])
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == size
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == model.config.eos_token_id
    assert report["parameters"]["after"] == report["parameters"]["before"] - (
        report["tokens"]["before"] - size) * model.config.hidden_size


def test_greedy_answers_equal_the_untrimmed_models_unless_its_argmax_was_dropped(trimmed, tiny_corpus, tmp_path):
    original, out, plan, _ = trimmed
    conversations = [row["messages"] for row in read_split(tiny_corpus, "test")][:6]
    same = greedy_agreement(load_model(str(original)), load_model(str(out)), plan, conversations, 16)
    assert (same["answers"], same["equal"], same["dropped_argmax"], same["inconsistent"]) == (6, 6, 0, [])
    # A model whose favourite token is one the corpus never needs: the trimmed model cannot say it,
    # and answers as the untrimmed one up to that token.
    model, tokenizer = load_model(str(original))
    favourite = next(i for i in range(len(tokenizer)) if i not in set(plan.kept))
    first = generate_batch(model, tokenizer, conversations[:1], 1)[0].output_ids[0]
    with torch.no_grad():  # tied: twice the first answer token's row doubles its (positive) logit
        weight = model.get_input_embeddings().weight
        weight[favourite] = 2 * weight[first]
    save_model_dir(model, tokenizer, tmp_path / "favourite")
    trim_checkpoint(tmp_path / "favourite", tiny_corpus, tmp_path / "trimmed", VocabConfig(splits=SPLIT))
    assert read_plan(tmp_path / "trimmed").kept == plan.kept
    result = greedy_agreement(load_model(str(tmp_path / "favourite")), load_model(str(tmp_path / "trimmed")), plan,
                              conversations, 16)
    assert result["dropped_argmax"] > 0 and result["inconsistent"] == []
    assert result["equal"] + result["dropped_argmax"] == result["answers"]
    for row in result["rows"]:
        assert row["equal"] == (row["dropped_at"] is None)


def test_any_text_tokenizes_and_decodes_to_itself_in_transformers_and_llama_cpp(trimmed, ggufs):
    _, out, _, _ = trimmed
    _, tokenizer = load_model(str(out))
    assert round_trip_failures(tokenizer) == []
    assert llama_cpp_round_trip_failures(ggufs[1]) == []
    assert llama_cpp_token_ids(ggufs[1], ROUND_TRIP_PROBES) == token_ids(tokenizer, list(ROUND_TRIP_PROBES))


def test_a_byte_the_vocabulary_lacked_is_added_with_a_zero_row(tiny_llama_dir):
    """SmolLM2 lacks 21 byte tokens (\\x04 among them) and drops those characters; trimmed, it has
    all 256. A new one's embedding row is zeros: its logit is exactly 0, below the best real one."""
    model, tokenizer = load_model(str(tiny_llama_dir))
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    lost = BYTE_TOKENS[4]  # the stand-in for \x04
    old_id = spec["model"]["vocab"].pop(lost)
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if lost not in m]
    a = tokenizer.convert_tokens_to_ids("a")
    plan = plan_trim(spec, {a})
    assert plan.new_bytes == [lost] and old_id not in plan.kept and plan.size == len(plan.kept) + 1
    assert trimmed_spec(spec, plan)["model"]["vocab"][lost] == len(plan.kept)
    with torch.no_grad():
        before = model(torch.tensor([[a] * 3])).logits[0]
        trim_model(model, plan)
        after = model(torch.tensor([plan.mapped([a] * 3)])).logits[0]
    assert torch.equal(after[:, len(plan.kept)], torch.zeros(3))
    assert torch.allclose(after[:, :len(plan.kept)], before[:, plan.kept], atol=1e-5)
    assert (after.argmax(-1) != len(plan.kept)).all()


def test_the_cli_trims_and_refuses_a_result_over_its_budget(tiny_llama_dir, tiny_corpus, tmp_path, capsys):
    assert main(["--model", str(tiny_llama_dir), "--data", str(tiny_corpus), "--out", str(tmp_path / "t"),
                 "--splits", "test", "--max-tokens", "300"]) == 2
    assert "over max_tokens 300" in capsys.readouterr().err and not (tmp_path / "t").exists()
    assert main(["--model", str(tiny_llama_dir), "--data", str(tiny_corpus), "--out", str(tmp_path / "t"),
                 "--splits", "test,val"]) == 0
    assert "corpus texts tokenize as before" in capsys.readouterr().out
    assert (tmp_path / "t" / VOCAB_PLAN_FILE).is_file()
    defaults = config_from_args(VocabConfig, build_parser().parse_args(["--model", "m", "--data", "d", "--out", "o"]))
    assert defaults == VocabConfig()


def test_the_pipeline_stage_trims_the_healed_student_and_exports_it(tiny_llama_dir, tiny_corpus, tmp_path):
    from compress.pipeline.config import load_config
    from compress.pipeline.manifest import Run
    from compress.pipeline.stages import BY_NAME, STAGE_NAMES, final_student

    assert STAGE_NAMES.index("evaluate") < STAGE_NAMES.index("vocab") < STAGE_NAMES.index("export")
    config = tmp_path / "run.toml"
    config.write_text("[run]\nid = 'v'\n[teacher]\nproxy = 'micro'\n[depth]\nkeep = 2\n[width]\nparams = '1M'\n"
                      "[vocab]\ntrim = true\nsplits = ['test']\n[export]\ngguf = ['f32']\n")
    run = Run(load_config(config), tmp_path / "runs")
    shutil.copytree(tiny_corpus, run.stage_dir("data"))
    shutil.copytree(tiny_llama_dir, run.stage_dir("heal") / "student")
    summary = BY_NAME["vocab"].run(run)
    assert final_student(run) == run.stage_dir("vocab") / "student"
    assert summary["tokens"] < summary["of"] and summary["texts_checked"] > 0
    exported = BY_NAME["export"].run(run)["gguf f32"]
    assert exported["answer"]["ran"] and exported["answer"]["same_as_torch"]
    reader = GGUFReader(str(run.stage_dir("export") / exported["file"]))
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == summary["tokens"]
