"""ONNX models built by `export.onnx` (onnxruntime-genai's model builder), run by onnxruntime-genai:
its own KV cache, tokenizer and sampler, on the CPU without torch at inference time."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import onnxruntime_genai as og

from data.prompt import render_template
from models.backends.base import Backend, BackendError, GenerationOptions, Messages, Pieces


class OnnxBackend(Backend):
    kind = "onnx"

    def __init__(self, model: str):
        super().__init__(model)
        folder = Path(model)
        config_path = folder / "genai_config.json"
        if not config_path.is_file():
            raise BackendError(f"no genai_config.json in {model}: build one with python -m export.onnx")
        self.config = json.loads(config_path.read_text())
        try:
            self.net = og.Model(og.Config(str(folder)))
            self.tokenizer = og.Tokenizer(self.net)
        except Exception as exc:  # onnxruntime-genai raises plain RuntimeErrors
            raise BackendError(f"onnxruntime-genai could not load {model}: {exc}") from exc
        self.template = _chat_template(folder)
        self.vocab_size = int(self.config["model"]["vocab_size"])
        self.context = int(self.config["model"]["context_length"])
        self._lock = threading.Lock()

    def _generate(self, messages: Messages, options: GenerationOptions, state: Pieces) -> Iterator[str]:
        ids = self.tokenizer.encode(render_template(self.template, messages))
        state.prompt_tokens = len(ids)
        if len(ids) >= self.context:
            raise BackendError(f"prompt of {len(ids)} tokens does not fit the model's context of {self.context}")
        params = og.GeneratorParams(self.net)
        params.set_search_options(
            max_length=min(self.context, len(ids) + options.max_tokens),
            do_sample=not options.greedy,
            temperature=options.temperature if not options.greedy else 1.0,
            top_p=options.top_p,
            top_k=self.vocab_size,  # no top-k cut: top-p alone, as the other backends do
            random_seed=options.seed,
        )
        eos = set(self.tokenizer.eos_token_ids)
        stream = self.tokenizer.create_stream()
        with self._lock:
            generator = og.Generator(self.net, params)
            try:
                generator.append_tokens(ids)
                for _ in range(options.max_tokens):
                    if generator.is_done():
                        break
                    generator.generate_next_token()
                    token = int(generator.get_next_tokens()[0])
                    if token in eos:
                        state.ended = True
                        break
                    yield stream.decode(token)
            finally:
                del generator


def _chat_template(folder: Path) -> str | None:
    """The checkpoint's chat template, which the builder copies next to the model."""
    path = folder / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    return json.loads(config.read_text()).get("chat_template") if config.is_file() else None
