"""QINS codec: Huffman and sparsity coding are lossless, the quantizer lands on its grid, the
container detects damage, and a model run from QINS weights computes exactly what the model with
the reconstructed weights computes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export import qins
from export.qins import (
    BLOCK,
    CodedEmbedding,
    CodedLinear,
    QINSConfig,
    QINSFormatError,
    QINSLinear,
    QINSWeight,
    QuantizedTensor,
    decode_quantized,
    encode_quantized,
    grid_lut,
    huffman_decode,
    huffman_encode,
    huffman_lengths,
    quantize,
    read_container,
    write_container,
)


def _roundtrip(symbols: np.ndarray) -> np.ndarray:
    lengths = huffman_lengths(np.bincount(symbols, minlength=256))
    stream, blocks = huffman_encode(symbols, lengths)
    return huffman_decode(stream, lengths, symbols.size, blocks)


@pytest.mark.parametrize("kind", ["uniform", "skewed", "single", "empty", "one", "two", "multiblock"])
def test_huffman_roundtrip_is_exact(kind):
    rng = np.random.default_rng(1)
    symbols = {
        "uniform": rng.integers(0, 256, 20_000),
        "skewed": np.minimum(rng.geometric(0.15, 30_000), 255),
        "single": np.full(5_000, 42),
        "empty": np.zeros(0),
        "one": np.array([255]),
        "two": np.array([0, 255, 255, 0, 0]),
        # Several lockstep blocks and a short last one.
        "multiblock": np.minimum(rng.geometric(0.3, 3 * BLOCK + 17), 255),
    }[kind].astype(np.uint8)
    assert np.array_equal(_roundtrip(symbols), symbols)


def test_huffman_lengths_are_limited_and_complete():
    fib = [1, 1]
    while len(fib) < 256:
        fib.append(min(fib[-1] + fib[-2], 2**40))
    counts = np.array(fib, dtype=np.int64)  # unlimited Huffman would need codes far past 15 bits
    lengths = huffman_lengths(counts)
    assert lengths.max() <= qins.MAX_CODE_BITS
    assert math.isclose(sum(2.0 ** -int(n) for n in lengths), 1.0)  # a full prefix code
    symbols = np.repeat(np.arange(256, dtype=np.uint8), 3)
    stream, blocks = huffman_encode(symbols, lengths)
    assert np.array_equal(huffman_decode(stream, lengths, symbols.size, blocks), symbols)


def test_huffman_beats_fixed_width_on_skewed_data():
    symbols = np.minimum(np.random.default_rng(2).geometric(0.3, 50_000), 255).astype(np.uint8)
    lengths = huffman_lengths(np.bincount(symbols, minlength=256))
    stream, _ = huffman_encode(symbols, lengths)
    p = np.bincount(symbols) / symbols.size
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
    assert 8 * len(stream) / symbols.size < entropy + 0.1


@pytest.mark.parametrize("grid", qins.GRIDS)
def test_exact_grid_values_and_zero_map_exactly(grid):
    lut = grid_lut(grid)
    top = 256 if grid == "inverse" else qins.LINEAR_TOP[grid] + 1
    codes = np.arange(top, dtype=np.uint8)
    scale = np.float32(0.5)  # exact in float16, so the stored scale is the true one
    w = np.stack([scale * lut[codes], -scale * lut[codes]]).astype(np.float32)
    q = quantize(w, grid)
    assert np.array_equal(q.codes[0], codes) and np.array_equal(q.codes[1], codes)
    assert q.codes[0, 0] == 0 and not q.negative[:, 0].any()
    assert np.array_equal(q.dequantize(), w)


def test_zero_rows_and_tiny_values_become_code_zero():
    w = np.zeros((3, 8), np.float32)
    w[1] = [1.0, 1e-4, -1e-4, 0, 0, 0, 0, 0.5]  # 1e-4 < 1 / 510: nearer 0 than the smallest level
    q = quantize(w)
    assert (q.codes[0] == 0).all() and q.scales[0] == 0
    assert list(q.codes[1]) == [1, 0, 0, 0, 0, 0, 0, 2]
    assert np.array_equal(q.dequantize()[0], w[0])


def test_reconstruction_error_is_bounded_by_the_grid():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 200)) * 0.05).astype(np.float32)
    q = quantize(w)
    levels = np.sort(grid_lut("inverse").astype(np.float64))
    ratio = np.abs(w) / q.scales[:, None]
    hi = np.clip(np.searchsorted(levels, ratio), 1, 255)
    half_gap = (levels[hi] - levels[hi - 1]) / 2 * q.scales[:, None]
    err = np.abs(q.dequantize().astype(np.float64) - w)
    # float16 scales may round the row maximum down by up to 2^-11 of it.
    slack = q.scales[:, None] * 2.0 ** -10
    assert (err <= half_gap + slack).all()
    # The coarse top of the grid is real: nothing between scale / 2 and scale.
    assert not ((q.dequantize() > q.scales[:, None] / 2) & (q.dequantize() < q.scales[:, None])).any()


def test_linear_grid_error_is_far_below_inverse():
    w = (np.random.default_rng(4).standard_normal((32, 256)) * 0.02).astype(np.float32)
    rel = {g: np.linalg.norm(quantize(w, g).dequantize() - w) / np.linalg.norm(w) for g in ("inverse", "linear")}
    assert rel["linear"] < 0.01 < rel["inverse"]


@pytest.mark.parametrize("zeros, expected", [(0.0, "inline"), (0.6, "bitmask"), (0.995, "runs")])
def test_tensor_payload_roundtrip_with_each_zero_encoding(zeros, expected):
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((40, 300)) * 0.05).astype(np.float32)
    w[rng.random(w.shape) < zeros] = 0.0
    w[:, 0] = 0.2  # every row keeps a scale
    q = quantize(w)
    payload, meta = encode_quantized(q)
    assert meta["sparsity"] == expected
    back = decode_quantized(payload, meta)
    assert np.array_equal(back.codes, q.codes) and np.array_equal(back.negative, q.negative)
    assert np.array_equal(back.scales, q.scales)


def test_empty_tensor_roundtrip():
    q = quantize(np.zeros((0, 7), np.float32))
    payload, meta = encode_quantized(q)
    assert decode_quantized(payload, meta).codes.shape == (0, 7)


def _entries(rng):
    yield qins.Entry("a.weight", quantized=quantize(rng.standard_normal((16, 48)).astype(np.float32)))
    yield qins.Entry("norm.weight", raw=rng.standard_normal(48).astype(np.float32))
    yield qins.Entry("b.weight", quantized=quantize(rng.standard_normal((8, 40)).astype(np.float32), "linear"))


def test_container_roundtrip(tmp_path):
    path = tmp_path / "t.qins"
    header = write_container(path, _entries(np.random.default_rng(6)), {"note": "x"})
    assert not list(tmp_path.glob(".*tmp"))
    back_header, tensors = read_container(path)
    assert back_header["note"] == "x" and [t["name"] for t in header["tensors"]] == list(tensors)
    expected = {e.name: e for e in _entries(np.random.default_rng(6))}
    for name, value in tensors.items():
        if isinstance(value, QuantizedTensor):
            assert np.array_equal(value.codes, expected[name].quantized.codes)
            assert value.grid == expected[name].quantized.grid
        else:
            assert np.array_equal(value, expected[name].raw)


def test_corruption_is_detected_and_names_the_tensor(tmp_path):
    path = tmp_path / "t.qins"
    header = write_container(path, _entries(np.random.default_rng(7)))
    meta = next(t for t in header["tensors"] if t["name"] == "b.weight")
    data = bytearray(path.read_bytes())
    data[8 + meta["offset"] + meta["nbytes"] // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(QINSFormatError, match="tensor b.weight: checksum mismatch"):
        read_container(path)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(QINSFormatError, match="truncated"):
        read_container(path)
    path.write_bytes(b"GGUF" + bytes(data[4:]))
    with pytest.raises(QINSFormatError, match="not a QINS file"):
        read_container(path)


def test_failed_write_leaves_nothing(tmp_path):
    def broken():
        yield from _entries(np.random.default_rng(8))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_container(tmp_path / "t.qins", broken())
    assert list(tmp_path.iterdir()) == []


def test_qins_linear_equals_linear_with_dequantized_weight():
    rng = np.random.default_rng(9)
    w = (rng.standard_normal((24, 37)) * 0.1).astype(np.float32)  # 37 columns: a padded sign byte
    q = quantize(w)
    bias = torch.randn(24)
    x = torch.randn(5, 3, 37)
    dense = torch.from_numpy(q.dequantize())
    expected = F.linear(x, dense, bias)
    layer = QINSLinear(q, bias)
    assert torch.equal(layer.coded.dense(), dense)
    assert torch.equal(layer(x), expected)
    cached = QINSLinear(q, bias, cache=True)
    assert torch.equal(cached(x), expected) and cached.coded._dense is not None
    embedding = CodedEmbedding(QINSWeight(q))
    ids = torch.tensor([[0, 5, 23], [7, 7, 1]])
    assert torch.equal(embedding(ids), dense[ids])


def _clone(model):
    import copy

    return copy.deepcopy(model)


def test_micro_model_runs_from_qins_weights(micro_teacher, tiny_corpus, tmp_path):
    from compress.calibration import encode_rows, split_rows
    from compress.evaluate import forced_metrics
    from models.load import LoadOptions, load_model

    model, tokenizer = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    report = qins.save_model_qins(model, tmp_path / "m.qins")
    assert report.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert 2 < report.bits_per_weight < 8 and 0 < report.linear_rel_error < 0.3
    loaded = qins.load_qins(tmp_path / "m.qins", micro_teacher)
    assert isinstance(loaded.lm_head, CodedLinear) and loaded.lm_head.coded is loaded.model.embed_tokens.coded
    reference = qins.dequantized_model(_clone(model))
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, reference(input_ids=ids).logits)
    # The config stored in the file is enough to rebuild the model.
    with torch.no_grad():
        again = qins.load_qins(tmp_path / "m.qins", cache_weights=True)
        assert torch.equal(again(input_ids=ids).logits, reference(input_ids=ids).logits)
    sequences = encode_rows(split_rows(tiny_corpus, "test", limit=6), tokenizer)
    metrics = forced_metrics(loaded, model, sequences, batch_size=6)
    assert math.isfinite(metrics["kl"]) and 0 < metrics["kl"] < 2.0


def test_int8_baseline_roundtrip(micro_teacher, tmp_path):
    from models.load import LoadOptions, load_model

    model, _ = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    size = qins.save_int8(model, tmp_path / "m.int8.safetensors")
    weights = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2)
    assert weights < size < 1.2 * weights + 200_000
    loaded = qins.load_int8(tmp_path / "m.int8.safetensors", micro_teacher)
    w = model.model.layers[0].mlp.down_proj.weight
    got = loaded.model.layers[0].mlp.down_proj.weight
    assert torch.linalg.norm(got - w) / torch.linalg.norm(w) < 0.01
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=0.1)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as done:
        qins.main(["--help"])
    assert done.value.code == 0 and "--model" in capsys.readouterr().out


def test_cli_encodes_and_checks(micro_teacher, tmp_path, capsys):
    out = tmp_path / "cli.qins"
    assert qins.main(["--model", str(micro_teacher), "--out", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "bits/weight" in text and "checksums ok" in text and "differ by at most 0.00e+00" in text
    assert qins.main(["--model", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_config_validation():
    with pytest.raises(ValueError, match="unknown grid"):
        qins.save_model_qins(torch.nn.Linear(2, 2), "/nonexistent/x.qins", QINSConfig(grid="log"))


def test_bench_runs_on_the_micro_model(micro_teacher, tiny_corpus, tmp_path):
    import json

    from bench.qins import main

    out = tmp_path / "qins.md"
    assert main(["--model", str(micro_teacher), "--corpus", str(tiny_corpus), "--limit", "4", "--decode-tokens", "0",
                 "--gguf", "q8_0", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {r["variant"]: r for r in report["models"][0]["rows"]}
    qins_row = rows["QINS (inverse grid), embedding coded"]
    assert qins_row["kl"] > rows["int8, per-row absmax (safetensors)"]["kl"] >= 0
    assert rows["GGUF q8_0"]["linear_rel_error"] < 0.02  # the GGUF names mapped back onto the right weights
    assert "| QINS (inverse grid), embedding coded |" in out.read_text()
