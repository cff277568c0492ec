"""One generation interface over every runtime a tour-guide model runs on.

    from models.backends import open_backend, GenerationOptions
    with open_backend("llamacpp", "models/tour-guide-q8_0.gguf") as backend:
        for chunk in backend.stream(query, GenerationOptions(max_tokens=128)):
            print(chunk.text, end="", flush=True)
        print(chunk.stats)

Backends: `torch` (a checkpoint directory or hub id, CPU or GPU), `llamacpp` (a .gguf file),
`onnx` (a folder built by export.onnx) and `openai` (a model name on an OpenAI-compatible
server given by `base_url`). Each is imported only when asked for, so a laptop with llama.cpp
alone never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from models.backends.base import (
    Answer,
    Backend,
    BackendError,
    Chunk,
    GenerationOptions,
    GenerationStats,
)

KINDS = ("torch", "llamacpp", "onnx", "openai")


def detect_kind(model: str) -> str:
    """The backend a model reference calls for: a .gguf file, an ONNX folder, or a checkpoint."""
    path = Path(model)
    if path.suffix == ".gguf":
        return "llamacpp"
    if (path / "genai_config.json").is_file():
        return "onnx"
    return "torch"


def open_backend(kind: str | None, model: str, **options) -> Backend:
    """Load `model` in backend `kind` (None: guessed from the model reference). Options go to the
    backend: torch `device`, `dtype`; llamacpp `n_ctx`, `threads`, `gpu_layers`; openai
    `base_url`, `api_key`."""
    kind = kind or detect_kind(model)
    # Each runtime module imports its own engine, so serving a GGUF or an ONNX folder never loads
    # torch and the openai SDK stays optional.
    if kind == "torch":
        from models.backends.torch_runtime import TorchBackend as cls
    elif kind == "llamacpp":
        from models.backends.llamacpp_runtime import LlamaCppBackend as cls
    elif kind == "onnx":
        from models.backends.onnx_runtime import OnnxBackend as cls
    elif kind == "openai":
        from models.backends.openai_runtime import OpenAIBackend as cls
        if "base_url" not in options:
            raise BackendError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
    else:
        raise BackendError(f"unknown backend {kind!r}; choose from {', '.join(KINDS)}")
    try:
        return cls(model, **options)
    except TypeError as exc:  # an option this backend does not take
        raise BackendError(f"backend {kind}: {exc}") from exc


__all__ = ["KINDS", "Backend", "BackendError", "Chunk", "Answer", "GenerationOptions", "GenerationStats",
           "detect_kind", "open_backend"]
