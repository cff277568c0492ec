"""GGUF export: what llama.cpp reads back must be the model we trained, token for token."""

import json
import subprocess
import sys

import gguf
import llama_cpp  # a hard requirement of the test extras: these parity tests must run, not skip
import numpy as np
import pytest
import torch
from conftest import tour_queries

from data.prompt import build_messages, render_prompt
from export.gguf import GGUFExportError, export_gguf, tensor_types
from models.load import load_model


def _field(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value[0]


def _llama(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, verbose=False, **kw)


def test_metadata_describes_the_checkpoint(micro_teacher, micro_gguf):
    model, tok = load_model(str(micro_teacher))
    config = model.config
    reader = gguf.GGUFReader(str(micro_gguf["f16"]))
    assert _field(reader, "general.architecture") == "qwen3"
    assert _field(reader, "qwen3.block_count") == config.num_hidden_layers
    assert _field(reader, "qwen3.embedding_length") == config.hidden_size
    assert _field(reader, "qwen3.feed_forward_length") == config.intermediate_size
    assert _field(reader, "qwen3.attention.head_count_kv") == config.num_key_value_heads
    # head_dim is explicit (16), not hidden / heads and not transformers' default of 128
    assert _field(reader, "qwen3.attention.key_length") == config.head_dim == 16
    assert _field(reader, "qwen3.rope.freq_base") == pytest.approx(config.rope_parameters["rope_theta"])
    assert _field(reader, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_norm_eps)
    assert _field(reader, "qwen3.context_length") == config.max_position_embeddings
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert _field(reader, "tokenizer.chat_template") == tok.chat_template
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == config.vocab_size
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reads the embedding back as the output
    assert {"token_embd.weight", "blk.0.attn_q_norm.weight", "blk.3.ffn_down.weight"} <= names
    types = tensor_types(micro_gguf["f16"])
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"


TEXTS = [
    "Location: 46V8+84 Sydney\nInterests: history, food\nStyle: brief",
    "Designed by the Danish architect Jørn Utzon in 1957 — 503 metres!",
    "  leading spaces, tabs\tand\n\nnewlines 12345 ümlaut 東京 🙂",
]


@pytest.mark.parametrize("text", TEXTS)
def test_llama_cpp_tokenizes_like_hugging_face(micro_teacher, micro_gguf, text):
    _, tok = load_model(str(micro_teacher))
    llm = _llama(micro_gguf["f16"], vocab_only=True)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text, add_special_tokens=False)["input_ids"]


def test_chat_prompt_tokenizes_identically(micro_teacher, micro_gguf):
    _, tok = load_model(str(micro_teacher))
    llm = _llama(micro_gguf["f16"], vocab_only=True)
    for query in tour_queries():
        prompt = render_prompt(build_messages(query), tok)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # the special token, not its characters


@pytest.mark.parametrize("quant,tolerance", [("f32", 1e-3), ("f16", 0.05)])
def test_logits_match_torch(micro_teacher, micro_gguf, quant, tolerance):
    model, tok = load_model(str(micro_teacher))
    prompt = render_prompt(build_messages(tour_queries()[1]), tok)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    llm = _llama(micro_gguf[quant], logits_all=True)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() / scale < tolerance
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.98


def test_greedy_generation_equals_torch(micro_teacher, micro_gguf):
    from models.generate import generate_batch

    model, tok = load_model(str(micro_teacher))
    llm = _llama(micro_gguf["f16"])
    for query in tour_queries():
        expected = generate_batch(model, tok, [build_messages(query)], max_new_tokens=40)[0].output_ids
        ids = llm.tokenize(render_prompt(build_messages(query), tok).encode(), add_bos=False, special=True)
        got = []
        for token in llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if token == tok.eos_token_id or len(got) == 40:
                break
            got.append(token)
        assert got == expected


def test_q8_0_is_smaller_and_close(micro_teacher, micro_gguf, tmp_path):
    report = export_gguf(micro_teacher, tmp_path / "q8.gguf", "q8_0", progress=False)
    assert report.tensor_types["Q8_0"] > 0 and not report.fallbacks
    assert report.bytes < 0.6 * micro_gguf["f16"].stat().st_size  # ~8.5 bits per weight against 16
    assert report.parameters == sum(p.numel() for p in load_model(str(micro_teacher))[0].parameters())


def test_k_quant_falls_back_on_short_rows_and_says_so(micro_teacher, tmp_path):
    report = export_gguf(micro_teacher, tmp_path / "q4.gguf", "q4_k_m", progress=False)
    assert report.fallbacks, "rows of 64 cannot be K-quantized"
    assert any("multiple of 256" in note for note in report.notes)
    assert not {"Q4_K", "Q5_K", "Q6_K"} & set(report.tensor_types)


def test_k_quant_used_where_rows_allow(micro_teacher, tmp_path):
    """A model 256 wide is K-quantized through llama.cpp's quantizer, and still generates."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(micro_teacher))
    config = Qwen3Config(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    wide = tmp_path / "wide"
    Qwen3ForCausalLM(config).save_pretrained(wide)
    tok.save_pretrained(wide)
    report = export_gguf(wide, tmp_path / "wide-q4.gguf", "q4_k_m", progress=False)
    assert not report.fallbacks and not report.notes
    assert report.tensor_types.get("Q4_K", 0) > 0
    llm = _llama(report.out)
    assert len(list(zip(range(5), llm.generate([1, 2, 3], temp=0.0)))) == 5


def test_refuses_other_architectures_and_leaves_no_partial_file(micro_teacher, tmp_path):
    broken = tmp_path / "mistral"
    broken.mkdir()
    config = json.loads((micro_teacher / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(GGUFExportError, match="writes Qwen3ForCausalLM, LlamaForCausalLM"):
        export_gguf(broken, tmp_path / "x.gguf", "f16", progress=False)
    with pytest.raises(GGUFExportError, match="unknown quant"):
        export_gguf(micro_teacher, tmp_path / "x.gguf", "q3_k", progress=False)
    assert not list(tmp_path.glob("*.gguf*"))


def test_cli(micro_teacher, tmp_path):
    out = tmp_path / "cli.gguf"
    done = subprocess.run([sys.executable, "-m", "export.gguf", "--model", str(micro_teacher), "--out", str(out),
                           "--quant", "q8_0", "--quiet", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bytes"] == out.stat().st_size
    missing = subprocess.run([sys.executable, "-m", "export.gguf", "--model", str(tmp_path / "nope"), "--out", str(out)],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no config.json" in missing.stderr


def test_untied_head_and_padded_vocabulary_like_real_qwen3(micro_teacher, tmp_path):
    """Qwen3-32B keeps a separate lm_head and pads its 151,669 tokens to 151,936 embedding rows:
    the GGUF gets output.weight and unused padding entries, and still computes torch's logits."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(micro_teacher))
    config = Qwen3Config(vocab_size=len(tok) + 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    torch.manual_seed(1)
    model = Qwen3ForCausalLM(config).eval()
    source = tmp_path / "untied"
    model.save_pretrained(source)
    tok.save_pretrained(source)
    report = export_gguf(source, tmp_path / "untied.gguf", "f32", progress=False)
    reader = gguf.GGUFReader(report.out)
    assert "output.weight" in {t.name for t in reader.tensors}
    assert _field(reader, "qwen3.rope.freq_base") == pytest.approx(1_000_000.0)
    types = reader.fields["tokenizer.ggml.token_type"]
    kinds = [int(types.parts[i][0]) for i in types.data]
    assert len(kinds) == len(tok) + 64 and set(kinds[len(tok):]) == {int(gguf.TokenType.UNUSED)}
    ids = tok("Hyde Park, Sydney: 1810", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    llm = _llama(report.out, logits_all=True)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-3
