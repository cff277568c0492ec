import sys
from pathlib import Path

# Test helpers (the fake LLM server) import as plain modules.
sys.path.insert(0, str(Path(__file__).parent))

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def pois():
    """The six fixture places (tests/fixtures/pois_small.jsonl), read once."""
    from data.poi import load_pois

    return load_pois(FIXTURES / "pois_small.jsonl")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A template corpus of the six fixture POIs: every split non-empty, built in a second."""
    from data.build import BuildConfig, build
    from data.sampling import SamplingConfig

    out = tmp_path_factory.mktemp("corpus")
    build(BuildConfig(pois=(FIXTURES / "pois_small.jsonl",),
                      sampling=SamplingConfig(samples_per_cell=8, val_fraction=0.2, test_fraction=0.2)), out, progress=False)
    return out


@pytest.fixture(scope="session")
def micro_teacher(tiny_corpus, tmp_path_factory) -> Path:
    """The micro proxy teacher, trained through its CLI exactly as the README says."""
    from train.proxy import main

    out = tmp_path_factory.mktemp("teacher")
    assert main(["--preset", "micro", "--data", str(tiny_corpus), "--out", str(out),
                 "--pois", str(FIXTURES / "pois_small.jsonl"), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="session")
def micro_analysis(micro_teacher, tiny_corpus, tmp_path_factory) -> Path:
    """A stats capture of the micro teacher on eight train samples, analysed (analysis.json)."""
    from compress.analyze import analyze
    from compress.capture import CaptureConfig, Sources, run_capture

    out = tmp_path_factory.mktemp("capture")
    run_capture(str(micro_teacher), out, Sources(data=str(tiny_corpus)), CaptureConfig(limit=8, max_new_tokens=24),
                progress=False)
    analyze(out, plots=False)
    return out


@pytest.fixture(scope="session")
def micro_gguf(micro_teacher, tmp_path_factory):
    """The micro teacher as GGUF in the exact and the half-precision types: quant -> path."""
    from export.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {q: Path(export_gguf(micro_teacher, out / f"micro-{q}.gguf", q, progress=False).out) for q in ("f32", "f16")}


@pytest.fixture(scope="session")
def micro_onnx(micro_teacher, tmp_path_factory) -> Path:
    """The micro teacher built for onnxruntime-genai in fp32."""
    from export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "micro-fp32"
    export_onnx(micro_teacher, out, "fp32")
    return out


def tour_queries():
    """A few visitor questions over the fixture places, styles and interests."""
    from data.prompt import TourQuery

    return [
        TourQuery("4RRH46V8+84", "46V8+84", "Sydney", ("architecture",), "brief"),
        TourQuery("4RRH46V8+84", "46V8+84", "Sydney", ("history", "food"), "detailed"),
        TourQuery("4RRH45FP+X2", "45FP+X2", "Sydney", ("nature",), "stimulate"),
    ]


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_corpus, tmp_path_factory) -> Path:
    """A random Llama in SmolLM2's shape, shrunk (9 query heads in 3 KV groups, head_dim 16, tied
    embeddings, rope base 1e5), with a SmolLM2-style tokenizer (single digits, GPT-2 byte regex)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.checkpoint import save_model_dir
    from models.tokenizer import corpus_texts, train_tokenizer

    tokenizer = train_tokenizer(corpus_texts(tiny_corpus), vocab_size=600, split="smollm")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=144, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=16, tie_word_embeddings=True,
                         rope_theta=100000.0, max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a sharper random model, so greedy choices are not near-ties
        model.model.embed_tokens.weight.mul_(8)
    return save_model_dir(model, tokenizer, tmp_path_factory.mktemp("llama") / "model")
