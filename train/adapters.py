"""LoRA adapters (peft) on every attention and FFN projection a model has, merged back into plain
weights after training: healing and teacher fine-tuning both train this way when asked to."""

from __future__ import annotations

import warnings

from peft import LoraConfig, get_peft_model
from torch import nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def with_lora(model: nn.Module, rank: int, alpha: int) -> nn.Module:
    """`model` wrapped with rank-`rank` adapters (no dropout: runs must be reproducible)."""
    targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in model.named_modules())]
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; the call is peft's, not ours.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets))


def base_of(model: nn.Module) -> nn.Module:
    """The model under the adapters (where its own modules and config live), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
