"""--model, --dtype / --device / --quantization: the model a stage CLI loads and how (models.load.LoadOptions).

Not stage settings: the pipeline loads every model with its [run] and [teacher] options, so these
flags exist on the command line only, with the command line's defaults.
"""

from __future__ import annotations

import argparse

import torch

from models.load import DTYPES, LoadOptions


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_model_flags(parser: argparse.ArgumentParser, dtype: str = "auto", device: str | None = None,
                    quantization: bool = False) -> argparse.ArgumentParser:
    """--model (required) and how to load it."""
    parser.add_argument("--model", required=True, help="model directory or Hugging Face hub id")
    return add_load_flags(parser, dtype, device, quantization)


def add_load_flags(parser: argparse.ArgumentParser, dtype: str = "auto", device: str | None = None,
                   quantization: bool = False) -> argparse.ArgumentParser:
    """The loading flags; `device` None: the first GPU when there is one."""
    group = parser.add_argument_group("loading the model")
    group.add_argument("--dtype", default=dtype, choices=sorted(DTYPES),
                       help="model dtype; auto keeps the checkpoint's (default: %(default)s)")
    group.add_argument("--device", default=device or default_device(),
                       help="cpu, cuda, cuda:N, or auto (accelerate, several GPUs) (default: %(default)s)")
    if quantization:
        group.add_argument("--quantization", choices=("8bit", "4bit"),
                           help="load the model quantized (bitsandbytes, CUDA)")
    return parser


def load_options(args: argparse.Namespace) -> LoadOptions:
    return LoadOptions(dtype=args.dtype, device=args.device, quantization=getattr(args, "quantization", None))
