"""The command line: encode a checkpoint into one .qins file, print the report, and with
--check read the file back and verify it (see `python -m export.qins --help`)."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

from core.cli import add_config_flags, config_from_args, fail
from export.qins.codec import QINSFormatError, QuantizedTensor, quantize
from export.qins.container import read_container
from export.qins.encoder import QINSConfig, dequantized_model, load_fp32, model_tensors, save_model_qins
from export.qins.runtime import load_qins
from models.load import ModelLoadError

DESCRIPTION = "QINS: the seed's inverse-magnitude weight codec, as a lossless container and a torch runtime."


def check_file(path: str | Path, model: nn.Module, config: QINSConfig) -> str:
    """Read the file back: checksums, then every coded tensor against a fresh quantization of
    the source weights (the codes must be identical: the container is lossless)."""
    header, stored = read_container(path)
    tensors, _ = model_tensors(model)
    checked = 0
    for name, value in stored.items():
        if isinstance(value, QuantizedTensor):
            if not quantize(tensors[name], header["grid"]).same_codes(value):
                raise QINSFormatError(f"tensor {name}: decoded codes differ from the source's")
            checked += 1
    loaded = load_qins(path)
    ids = torch.arange(min(16, model.config.vocab_size))[None]
    with torch.no_grad():
        reference = dequantized_model(copy.deepcopy(model), config)(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    diff = float((reference - got).abs().max())
    return (f"check: {len(stored)} tensors, checksums ok, {checked} coded tensors decode to the encoder's codes; "
            f"logits vs the dequantized-weight model differ by at most {diff:.2e}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.qins", description=DESCRIPTION,
                                     epilog="Example: python -m export.qins --model runs/demo/heal/student "
                                     "--out out/student.qins --check")
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="the .qins file to write")
    # The CLI always verifies what it writes, so `verify` has no flag.
    add_config_flags(parser, QINSConfig, skip=("verify",))
    parser.add_argument("--check", action="store_true", help="read the file back and verify it")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(QINSConfig, args)
    try:
        model = load_fp32(args.model)
        report = save_model_qins(model, args.out, config)
        print(json.dumps(report.to_dict(), indent=1) if args.json else report.summary())
        if args.check:
            print(check_file(args.out, model, config))
    except (ModelLoadError, QINSFormatError, ValueError, OSError) as exc:
        return fail(exc)
    return 0
