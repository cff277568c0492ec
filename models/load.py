"""Load a teacher (or any supported causal LM) and name its parts.

The same code loads Qwen3-32B from the Hugging Face Hub on a GPU box and a proxy model from a
local directory on a laptop. Everything downstream (capture, pruning, distillation) reaches the
decoder through `decoder_layers` and `layer_parts`, so a new architecture is supported by adding
one entry to `LAYOUTS`, and an unknown one fails here with a clear message rather than deep inside
a hook.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to fix."""


class UnsupportedArchitecture(ModelLoadError):
    pass


@dataclass(frozen=True)
class Layout:
    """Where the pieces of one decoder architecture live, by attribute name."""

    layers: str = "model.layers"
    final_norm: str = "model.norm"
    embed: str = "model.embed_tokens"
    attn: str = "self_attn"
    mlp: str = "mlp"
    o_proj: str = "self_attn.o_proj"
    down_proj: str = "mlp.down_proj"
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"


# Qwen3, Qwen2 and Llama share the pre-norm decoder layout; they differ in QK-norm (Qwen3) and
# QKV bias (Qwen2), which the pruning code handles through the modules themselves.
LAYOUTS: dict[str, Layout] = {"qwen3": Layout(), "qwen2": Layout(), "llama": Layout()}

DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
QUANTIZATIONS = (None, "8bit", "4bit")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class LoadOptions:
    dtype: str = "auto"  # a DTYPES key; "auto" keeps the checkpoint's dtype
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto" to spread over all GPUs (accelerate)
    quantization: str | None = None  # "8bit" / "4bit" through bitsandbytes
    revision: str | None = None
    trust_remote_code: bool = False


def torch_dtype(name: str):
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}") from None


def check_source(name_or_path: str) -> str:
    """A local directory, or a Hub id; anything that looks like a path but is missing is an
    error here, before transformers tries to read it as a repository name."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: not a saved model directory")
        return str(path)
    # "out/teacher" is a valid hub id too; if "out" is a local folder, the user meant a path.
    looks_local = Path(name_or_path.split("/")[0]).expanduser().is_dir() and "/" in name_or_path
    if name_or_path.startswith((".", "/", "~")) or not _HUB_ID.match(name_or_path) or looks_local:
        raise ModelLoadError(f"no model directory at {name_or_path}")
    return name_or_path


def architecture(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise UnsupportedArchitecture(
            f"unsupported architecture {model_type!r}: supported are {', '.join(sorted(LAYOUTS))}"
        )
    return model_type


def layout_of(model: nn.Module) -> Layout:
    return LAYOUTS[architecture(model.config)]


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _get(model, layout_of(model).layers)


def final_norm(model: nn.Module) -> nn.Module:
    return _get(model, layout_of(model).final_norm)


@dataclass
class LayerParts:
    attn: nn.Module
    mlp: nn.Module
    o_proj: nn.Linear
    down_proj: nn.Linear
    input_norm: nn.Module
    post_attn_norm: nn.Module


def layer_parts(model: nn.Module, index: int) -> LayerParts:
    layout = layout_of(model)
    layer = decoder_layers(model)[index]
    return LayerParts(
        attn=_get(layer, layout.attn),
        mlp=_get(layer, layout.mlp),
        o_proj=_get(layer, layout.o_proj),
        down_proj=_get(layer, layout.down_proj),
        input_norm=_get(layer, layout.input_norm),
        post_attn_norm=_get(layer, layout.post_attn_norm),
    )


def _quantization_config(kind: str | None):
    if kind not in QUANTIZATIONS:
        raise ModelLoadError(f"unknown quantization {kind!r}; choose 8bit or 4bit")
    if kind is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"{kind} loading needs bitsandbytes: pip install bitsandbytes")
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)


def load_config(name_or_path: str, options: LoadOptions = LoadOptions()):
    source = check_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(
            source, revision=options.revision, trust_remote_code=options.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read the config of {name_or_path}: {exc}") from exc
    architecture(config)
    return config


def load_model(name_or_path: str, options: LoadOptions = LoadOptions()):
    """(model, tokenizer) in eval mode. Checks the architecture from the config before any
    weights are read, so a 60 GB download never ends in 'unsupported'."""
    config = load_config(name_or_path, options)
    source = check_source(name_or_path)
    kwargs: dict = {"revision": options.revision, "trust_remote_code": options.trust_remote_code}
    kwargs["dtype"] = torch_dtype(options.dtype)
    quant = _quantization_config(options.quantization)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if options.device == "auto" or quant is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise ModelLoadError("device 'auto' and quantized loading need accelerate: pip install accelerate")
        kwargs["device_map"] = "auto" if options.device == "auto" else {"": options.device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, revision=options.revision)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load {name_or_path}: {exc}") from exc
    if "device_map" not in kwargs:
        model.to(options.device)
    model.eval()
    return model, tokenizer


def input_device(model: nn.Module) -> torch.device:
    """Where input ids must go: the embedding's device (the first GPU under device_map)."""
    return _get(model, layout_of(model).embed).weight.device
