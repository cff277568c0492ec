"""Writing a model directory that `from_pretrained` loads as is: weights, config, tokenizer and
chat template."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def save_model_dir(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """save_pretrained of the model, its tokenizer and chat template, loadable as is."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
