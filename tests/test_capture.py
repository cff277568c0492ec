"""Activation capture and layer analysis on the micro proxy teacher."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress.analyze import ImportanceWeights, analyze, load_stats
from compress.capture import ActivationRecorder, CaptureConfig, Sources, run_capture, token_entropy
from compress.capture import main as capture_main
from compress.shards import CaptureReader, ShardError, read_metadata
from models.load import LoadOptions, load_model

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_pipeline_runs_end_to_end(micro_teacher, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "capture"
    assert capture_main(["--model", str(micro_teacher), "--data", str(tiny_corpus), "--output-dir", str(out),
                         "--format", "h5", "--analyze", "--limit", "5", "--max-new-tokens", "24"]) == 0
    printed = capsys.readouterr().out
    assert "least important first" in printed and "most redundant block of 2" in printed

    rows = read_metadata(out)
    assert [r["id"] for r in rows] == [f"train:{n}" for n in range(5)]
    assert (out / "activations.h5").is_file() and not list((out / "parts").glob("*"))
    reader = CaptureReader(out)
    assert reader.verify() == 5
    row, tensors = next(iter(reader))
    n_in, n_all = row["span"][1], row["span"][2]
    assert row["input_tokens"] + row["output_tokens"] == tensors["input_ids"].tolist()
    assert len(row["output_tokens"]) > 0 and n_all - n_in == len(row["output_tokens"])
    assert tensors["output.3"].shape == (n_all, 64) and tensors["down_proj_in.0"].shape == (n_all, 192)
    assert tensors["o_proj_in.2"].shape == (n_all, 4 * 16) and tensors["output.1"].dtype == torch.float16
    reader.close()

    assert subprocess.run([sys.executable, "-m", "compress.analyze", str(out), "--out", str(tmp_path / "a")],
                          cwd=ROOT, capture_output=True, text=True).returncode == 0
    analysis = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert analysis["layers"] == [0, 1, 2, 3] and analysis["samples"] == 5
    assert sorted(analysis["weighted"]["ranking"]) == [0, 1, 2, 3]
    for name in ("similarity.png", "importance.png"):
        assert (tmp_path / "a" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    importance = load_file(str(tmp_path / "a" / "importance.safetensors"))
    assert importance["weighted.neuron_importance"].shape == (4, 192)
    assert importance["unweighted.head_importance"].shape == (4, 4)


def test_hooks_see_the_pre_norm_residual_stream_and_the_projection_inputs(micro_teacher):
    model, tok = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    ids = torch.tensor([tok("Circular Quay ferries leave from the wharf.")["input_ids"]])
    recorder = ActivationRecorder(model, [0, 1, 2, 3])
    with torch.no_grad():
        model(input_ids=ids[:, :3])  # outside recording(): nothing is kept
        assert recorder.buffer == {}
        with recorder.recording():
            out = model(input_ids=ids, output_hidden_states=True)
    acts = recorder.take()
    recorder.remove()
    hidden = out.hidden_states
    assert torch.allclose(acts["input.0"], hidden[0][0])
    for layer in range(3):
        assert torch.allclose(acts[f"output.{layer}"], hidden[layer + 1][0], atol=1e-6)
    # Hugging Face's last hidden state has the final norm applied; the hook's is the raw residual.
    assert torch.allclose(model.model.norm(acts["output.3"]), hidden[4][0], atol=1e-5)
    assert not torch.allclose(acts["output.3"], hidden[4][0], atol=1e-3)
    layer = model.model.layers[1]
    assert torch.allclose(layer.mlp.down_proj(acts["down_proj_in.1"]) + acts["post_attn.1"], acts["output.1"], atol=1e-5)
    assert torch.allclose(layer.self_attn.o_proj(acts["o_proj_in.1"]) + acts["output.0"], acts["post_attn.1"], atol=1e-5)


def test_entropy_is_high_for_uniform_and_zero_for_certain_predictions():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(token_entropy(logits, chunk=1), torch.tensor([torch.log(torch.tensor(4.0)).item(), 0.0]), atol=1e-4)


def test_stats_mode_matches_the_raw_shards_and_has_a_fixed_size(micro_teacher, tmp_path):
    texts = [f"Sample {n}: the harbour bridge and the opera house face each other across the water." * (1 + n % 3)
             for n in range(6)]
    common = dict(sources=Sources(texts=texts), load=LoadOptions(dtype="float32"), progress=False)
    run_capture(str(micro_teacher), tmp_path / "raw", config=CaptureConfig(format="pt", shard_dtype="float32"), **common)
    run_capture(str(micro_teacher), tmp_path / "stats", **common)
    run_capture(str(micro_teacher), tmp_path / "stats2", config=CaptureConfig(limit=2), **common)
    def size(d):
        return sum(t.numel() * t.element_size() for t in load_file(str(tmp_path / d / "stats.safetensors")).values())

    assert size("stats") == size("stats2"), "the sums do not grow with the number of tokens"

    from_raw, _ = load_stats(tmp_path / "raw")
    from_stats, _ = load_stats(tmp_path / "stats")
    for key, value in from_stats.sums.items():
        assert torch.allclose(value, from_raw.sums[key], rtol=1e-4, atol=1e-6), key

    # One number checked by hand: the unweighted mean cosine of layer 2's input and output.
    reader = CaptureReader(tmp_path / "raw")
    cosines = [torch.nn.functional.cosine_similarity(t["output.1"], t["output.2"], dim=-1) for _, t in reader]
    expected = torch.cat(cosines).mean()
    assert torch.isclose(from_stats.summary("unweighted")["cos_layer"][2], expected.double(), atol=1e-5)
    cka = from_stats.summary("weighted")["pair_cka"]
    assert torch.allclose(cka.diagonal(), torch.ones(5, dtype=torch.float64)) and (cka <= 1 + 1e-9).all()


def test_text_file_samples_dir_layers_and_truncation(micro_teacher, tmp_path):
    (tmp_path / "texts.txt").write_text("first line of text\n\nsecond line of text\n")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "a.txt").write_text("word " * 80)
    with pytest.warns(UserWarning, match="truncated to --max-length 32"):
        summary = run_capture(str(micro_teacher), tmp_path / "o", Sources(
            text_file=str(tmp_path / "texts.txt"), samples_dir=str(tmp_path / "samples")),
            CaptureConfig(layers=(1, 3), max_length=32, format="pt"), progress=False)
    assert summary["samples"] == 3 and summary["truncated"] == 1
    rows = read_metadata(tmp_path / "o")
    assert [r["id"] for r in rows] == ["texts.txt:0", "texts.txt:2", "file:a.txt"]
    tensors = CaptureReader(tmp_path / "o").load(rows[2])
    # Layer 1's input and layer 3's input are stored: neither is a captured layer's output.
    assert {"input.1", "input.3", "output.1", "output.3"} <= tensors.keys() and "output.2" not in tensors
    assert tensors["output.3"].shape[0] == 32
    scores = analyze(tmp_path / "o", plots=False)["unweighted"]
    assert scores["states"] == ["input.1", "output.1", "input.3", "output.3"]
    assert set(scores["blocks"]) == {"1"}, "layers 1 and 3 do not form a block of two"
    assert scores["blocks"]["1"]["start_layers"] == [1, 3]


def test_bad_input_fails_with_a_clear_message(micro_teacher, tmp_path, capsys):
    assert capture_main(["--model", str(tmp_path / "missing"), "--text", "x", "--output-dir", str(tmp_path / "o")]) == 2
    assert "no model directory at" in capsys.readouterr().err
    assert capture_main(["--model", str(micro_teacher), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no samples" in capsys.readouterr().err
    assert capture_main(["--model", str(micro_teacher), "--text", "x", "--layer", "9", "--output-dir", str(tmp_path / "o")]) == 2
    assert "out of range: the model has 4 layers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown importance term"):
        ImportanceWeights.parse("magnitude=1")
    help_text = subprocess.run([sys.executable, "-m", "compress.capture", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    for flag in ("--model", "--data", "--text", "--text-file", "--samples-dir", "--output-dir", "--layer",
                 "--max-length", "--dtype", "--device", "--format", "--analyze", "--limit"):
        assert flag in help_text
    analyze_help = subprocess.run([sys.executable, "-m", "compress.analyze", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "block_influence" in analyze_help and "CKA" in analyze_help and "--out" in analyze_help


def test_a_corrupt_or_missing_shard_is_named(micro_teacher, tmp_path):
    run_capture(str(micro_teacher), tmp_path / "pt", Sources(texts=["one text", "two texts"]), CaptureConfig(format="pt"),
                progress=False)
    shard = tmp_path / "pt" / "sample_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sample_00001.safetensors: SHA-256 mismatch"):
        CaptureReader(tmp_path / "pt").verify()
    shard.unlink()
    with pytest.raises(ShardError, match="sample_00001.safetensors: missing"):
        CaptureReader(tmp_path / "pt").verify()

    run_capture(str(micro_teacher), tmp_path / "h5", Sources(texts=["one text", "two texts"]),
                CaptureConfig(format="h5", shard_dtype="bfloat16"), progress=False)
    reader = CaptureReader(tmp_path / "h5")
    assert reader.verify() == 2 and reader.load(reader.rows[1])["output.2"].dtype == torch.bfloat16
    reader.close()
    import h5py

    with h5py.File(tmp_path / "h5" / "activations.h5", "a") as f:
        f["sample_00001/output.2"][0, 0] += 1
    with pytest.raises(ShardError, match=r"activations.h5 \(group sample_00001\): SHA-256 mismatch"):
        CaptureReader(tmp_path / "h5").verify()


def _capture_cmd(model, corpus, out, fmt):
    return [sys.executable, "-m", "compress.capture", "--model", str(model), "--data", str(corpus),
            "--output-dir", str(out), "--format", fmt, "--limit", "10", "--max-new-tokens", "16",
            "--batch-size", "1", "--device", "cpu"]


@pytest.mark.parametrize("fmt", ["pt", "h5"])
def test_a_capture_killed_halfway_resumes_without_duplicates_or_corrupt_shards(fmt, micro_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "cap"
    proc = subprocess.Popen(_capture_cmd(micro_teacher, tiny_corpus, out, fmt), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(read_metadata(out)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    listed = len(read_metadata(out))
    assert 3 <= listed < 10, "killed mid-capture"
    # A half-written shard a kill could leave, and a torn metadata line: neither may survive.
    (out / ".sample_00009.safetensors.4242.tmp").write_bytes(b"partial")
    with open(out / "metadata.jsonl", "a") as f:
        f.write('{"id": "train:9", "index"')

    result = subprocess.run(_capture_cmd(micro_teacher, tiny_corpus, out, fmt), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["captured_now"] == 10 - listed
    rows = read_metadata(out)
    assert [r["id"] for r in rows] == [f"train:{n}" for n in range(10)]
    assert [r["index"] for r in rows] == list(range(10))
    assert CaptureReader(out).verify() == 10
    assert not list(out.rglob("*.tmp"))


def test_a_killed_stats_capture_resumes_to_the_same_sums(micro_teacher, tmp_path):
    texts = [f"Text number {n} about Bondi Beach and its surf." for n in range(5)]
    full = tmp_path / "full"
    fp32 = LoadOptions(dtype="float32")
    run_capture(str(micro_teacher), full, Sources(texts=texts), load=fp32, progress=False)
    part = tmp_path / "part"
    run_capture(str(micro_teacher), part, Sources(texts=texts[:3]), load=fp32, progress=False)
    done = run_capture(str(micro_teacher), part, Sources(texts=texts), load=fp32, progress=False)
    assert done["captured_now"] == 2
    a, b = load_stats(full)[0], load_stats(part)[0]
    assert a.samples == b.samples == 5
    assert all(torch.allclose(a.sums[k], b.sums[k], rtol=1e-5, atol=1e-7) for k in a.sums)
    with pytest.raises(Exception, match="different max_length"):
        run_capture(str(micro_teacher), part, Sources(texts=texts), CaptureConfig(max_length=64), progress=False)


def test_the_capture_benchmark_and_teacher_report_write_their_pages(micro_teacher, tiny_corpus, tmp_path):
    from bench.capture import main as bench_main
    from bench.teacher_report import main as report_main

    out = tmp_path / "capture.md"
    assert bench_main(["--model", str(micro_teacher), "--data", str(tiny_corpus), "--overhead-samples", "2",
                       "--repeats", "1", "--storage-samples", "2", "--analysis-samples", "3", "--scale-preset", "micro",
                       "--work", str(tmp_path / "w"), "--out", str(out), "--device", "cpu"]) == 0
    text = out.read_text()
    assert "ratio (sum of medians)" in text and "Qwen3-32B" in text and "most redundant block" in text
    assert "--analysis-samples 3 --scale-preset micro" in text  # the command as given, to reproduce it
    assert f"layers of `{micro_teacher.name}`" in text
    assert (tmp_path / "capture_similarity.png").is_file()
    assert report_main([str(micro_teacher), "--out-dir", str(tmp_path)]) == 0
    assert "fact recall, training places" in (tmp_path / "teacher-micro.md").read_text()
