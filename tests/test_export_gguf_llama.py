"""GGUF export of the Llama architecture (SmolLM2's): a tiny random Llama with a SmolLM2-style
tokenizer (byte-level BPE with GPT-2's regex) reads back in llama.cpp as the same model."""

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from conftest import tour_queries

from data.prompt import build_messages, render_prompt
from export.gguf import export_gguf, interleave_rope_rows
from models.load import load_model


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama-gguf") / "tiny-f32.gguf"
    export_gguf(tiny_llama_dir, out, "f32", progress=False)
    return tiny_llama_dir, out


def _llama(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, verbose=False, **kw)




def test_metadata_is_llamas(tiny_llama):
    _, out = tiny_llama
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert reader.fields["llama.attention.head_count"].contents() == 9
    assert reader.fields["llama.attention.head_count_kv"].contents() == 3
    assert reader.fields["llama.rope.freq_base"].contents() == pytest.approx(1e5)


def test_llama_cpp_tokenizes_like_hugging_face(tiny_llama):
    folder, out = tiny_llama
    _, tok = load_model(str(folder))
    llm = _llama(out, vocab_only=True)
    for query in tour_queries():
        prompt = render_prompt(build_messages(query), tok) + "  1973, 1,234.5 m² — naïve\n\nx"
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == tok(prompt, add_special_tokens=False)["input_ids"]


def test_logits_and_greedy_answers_equal_torch(tiny_llama):
    folder, out = tiny_llama
    model, tok = load_model(str(folder))
    llm = _llama(out, logits_all=True)
    ids = tok(render_prompt(build_messages(tour_queries()[1]), tok), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-3
    with torch.no_grad():
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    llm.reset()
    answer = [t for _, t in zip(range(24), llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0,
                                                        repeat_penalty=1.0))]
    assert answer == greedy[:len(answer)] and len(answer) == 24


def test_rope_rows_interleave_per_head():
    rows = np.arange(2 * 8, dtype=np.float32).reshape(8, 2)  # 2 heads of head_dim 4
    out = interleave_rope_rows(rows, heads=2)
    assert out[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]  # (0, d/2, 1, d/2 + 1) within each head
