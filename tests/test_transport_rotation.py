"""Rotation diagnostics between two raw captures: a student that is its teacher rotated is found
to be exactly that, by streaming over shards whose checksums are verified."""

import json

import pytest
import torch
from safetensors.torch import load_file

from compress.capture import CaptureConfig, Sources, run_capture
from compress.transport.apply import absorb_norms, rotate_hidden
from compress.transport.rotation import TransportError, analyse, layer_map, main
from models.load import load_model

TEXTS = ["Location: 46V8+74 Sydney\nInterests: history\nStyle: brief",
         "The Opera House opened in 1973 on Bennelong Point.",
         "Hyde Park is Australia's oldest public park, set aside in 1810."]


def _capture(model_dir, out, fmt="pt"):
    run_capture(str(model_dir), out, Sources(texts=list(TEXTS)), CaptureConfig(format=fmt), progress=False)
    return out


@pytest.fixture(scope="module")
def captures(micro_teacher, tmp_path_factory):
    """The micro teacher, and the same model with its hidden space rotated (a student of equal width)."""
    root = tmp_path_factory.mktemp("transport")
    model, tok = load_model(str(micro_teacher))
    q, r = torch.linalg.qr(torch.randn(model.config.hidden_size, model.config.hidden_size,
                                       generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    absorb_norms(model)
    rotate_hidden(model, q * torch.sign(torch.diagonal(r)))
    rotated = root / "rotated"
    model.save_pretrained(rotated)
    tok.save_pretrained(rotated)
    return _capture(micro_teacher, root / "teacher"), _capture(rotated, root / "student", "h5"), root


def test_a_rotated_copy_is_recovered(captures, tmp_path):
    teacher, student, _ = captures
    ledger = tmp_path / "ledger.jsonl"
    results = analyse(student, teacher, [(1, 1), (3, 3)], tmp_path / "rot", ledger)
    for r in results:
        assert r["cosine_after"] > 0.999 > r["cosine_before"]
        assert r["tokens"] > 20 and r["student_width"] == r["teacher_width"] == 64
        assert r["pca_explained"] == pytest.approx(1.0)
        saved = load_file(r["rotation_file"])
        rotation = saved["rotation"].double()
        assert torch.allclose(rotation @ rotation.T, torch.eye(64, dtype=torch.float64), atol=1e-5)
        assert saved["pca"].shape == (64, 64)
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(l["student_layer"], l["teacher_layer"]) for l in lines] == [(1, 1), (3, 3)]
    analyse(student, teacher, [(0, 0)], tmp_path / "rot", ledger)  # the ledger is appended to
    assert len(ledger.read_text().splitlines()) == 3


def test_a_narrower_student_gets_pca_then_rotation(captures, tmp_path):
    """A student kept only some layers: layer 1 of the student is matched to a teacher layer by
    the plan; widths may differ and PCA brings the teacher down to the student's."""
    teacher, student, root = captures
    plan = root / "plan.json"
    plan.write_text(json.dumps({"keep": [0, 2, 3]}))
    assert layer_map(["1", "2:0"], str(plan)) == [(1, 2), (2, 0)]
    r = analyse(student, teacher, [(1, 2)], tmp_path / "rot")[0]
    assert r["teacher_layer"] == 2 and r["cosine_after"] >= r["cosine_before"]


def test_mismatched_texts_and_damaged_shards_are_named(captures, micro_teacher, tmp_path):
    teacher, student, _ = captures
    other = tmp_path / "other"
    run_capture(str(micro_teacher), other, Sources(texts=["something else", *TEXTS[1:]]), CaptureConfig(format="pt"),
                progress=False)
    with pytest.raises(TransportError, match="different tokens"):
        analyse(student, other, [(1, 1)], tmp_path / "rot")
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(teacher, broken)
    shard = sorted(broken.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(TransportError, match="SHA-256 mismatch"):
        analyse(student, broken, [(1, 1)], tmp_path / "rot")
    with pytest.raises(TransportError, match="no 'output.7'"):
        analyse(student, teacher, [(7, 7)], tmp_path / "rot")


def test_cli(captures, tmp_path, capsys):
    teacher, student, _ = captures
    assert main(["--student", str(student), "--teacher", str(teacher), "--layer", "2", "--out", str(tmp_path / "r"),
                 "--ledger", str(tmp_path / "l.jsonl")]) == 0
    assert "cos before" in capsys.readouterr().out
    assert main(["--student", str(student), "--teacher", str(tmp_path / "none"), "--layer", "2",
                 "--out", str(tmp_path / "r")]) == 2
