"""One prompt format for every backend, and proxy tokenizers built like Qwen's."""

import pytest
from transformers import AutoTokenizer

from data.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT, TourQuery, build_messages, render_chatml, render_prompt
from models.tokenizer import QWEN2_SPLIT, SPECIAL_TOKENS, train_tokenizer

TEXTS = [
    "The Sydney Opera House opened in 1973 and was designed by Jørn Utzon.",
    "Bondi Beach is 1 km long; swim between the flags! Is it worth it? Yes.",
    "Café culture in Surry Hills — try the flat white 😊.",
    "Location: 46V8+74 Sydney\nInterests: history, views\nStyle: brief",
] * 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = train_tokenizer(TEXTS, vocab_size=400, min_frequency=1)
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def query(**kw):
    base = dict(plus_code="4RRH46V8+74", short_code="46V8+74", locality="Sydney",
                interests=("views", "history"), style="brief")
    return TourQuery(**{**base, **kw})


def test_the_user_message_names_the_short_code_locality_interests_and_style():
    messages = build_messages(query())
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    # Interests come in vocabulary order whatever order they were ticked in.
    assert messages[1]["content"] == "Location: 46V8+74 Sydney\nInterests: history, views\nStyle: brief"


def test_without_a_locality_the_full_code_is_the_location():
    messages = build_messages(query(short_code=None, locality=None))
    assert messages[1]["content"].startswith("Location: 4RRH46V8+74\n")


@pytest.mark.parametrize("bad", [dict(interests=()), dict(interests=("karaoke",)), dict(style="epic")])
def test_queries_reject_unknown_interests_and_styles(bad):
    with pytest.raises(ValueError):
        query(**bad)


def test_chatml_rendering_is_what_qwen3_renders():
    text = render_chatml(build_messages(query()))
    assert text.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("Style: brief<|im_end|>\n<|im_start|>assistant\n")


def test_the_saved_tokenizer_has_the_chat_template_and_renders_like_render_chatml(tokenizer):
    messages = build_messages(query())
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert render_prompt(messages, tokenizer) == render_chatml(messages)
    without_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without_prompt == render_chatml(messages, add_generation_prompt=False)


def test_special_tokens_are_single_ids_and_eos_ends_the_assistant_turn(tokenizer):
    for special in SPECIAL_TOKENS:
        assert len(tokenizer(special)["input_ids"]) == 1
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("text", ["Jørn Utzon, 1973.", "🦘 in Sydney!", "tab\tand\n\nnewlines  ", "مرحبا", "x" * 50])
def test_byte_level_encoding_round_trips_any_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_pre_tokenizer_splits_like_qwen2_digits_one_by_one(tokenizer):
    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("In 1973 it's open")
    words = [p for p, _ in pieces]
    assert words == ["In", "Ġ", "1", "9", "7", "3", "Ġit", "'s", "Ġopen"]
    assert r"\p{N}" in QWEN2_SPLIT


def test_training_learns_merges_for_frequent_words(tokenizer):
    assert len(tokenizer("Sydney")["input_ids"]) < len("Sydney")


def test_too_small_a_vocabulary_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_the_cli_trains_on_a_built_corpus_and_saves_a_loadable_directory(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from data.build import BuildConfig, build

    corpus = tmp_path / "corpus"
    build(BuildConfig(pois=(Path(__file__).parent / "fixtures" / "pois_small.jsonl",)), corpus, progress=False)
    run = subprocess.run([sys.executable, "-m", "models.tokenizer", "--data", str(corpus), "--out", str(tmp_path / "tok"),
                          "--vocab-size", "600"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["vocab_size"] <= 600
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    row = json.loads((corpus / "train.jsonl").read_text().splitlines()[0])
    assert tok.decode(tok(row["target"])["input_ids"]) == row["target"]
    missing = subprocess.run([sys.executable, "-m", "models.tokenizer", "--data", str(tmp_path / "none"), "--out",
                              str(tmp_path / "t2")], capture_output=True, text=True)
    assert missing.returncode == 2 and "train.jsonl" in missing.stderr
