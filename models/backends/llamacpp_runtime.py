"""GGUF models through llama.cpp (llama-cpp-python): the offline laptop and phone runtime.

llama.cpp's `Llama` object is not thread-safe (one KV cache, one sampler), so requests to one
backend are serialized by a lock held for the whole stream.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
from gguf import GGUFReader

from data.prompt import render_template
from models.backends.base import Backend, BackendError, GenerationOptions, Messages, Pieces, TextAssembler


class LlamaCppBackend(Backend):
    kind = "llamacpp"

    def __init__(self, model: str, n_ctx: int = 4096, threads: int | None = None, gpu_layers: int = 0):
        super().__init__(model)
        if not Path(model).is_file():
            raise BackendError(f"no GGUF file at {model}")
        # llama.cpp's threads meet at spinning OpenMP barriers each layer: one thread per physical core
        # (half the logical CPUs, as llama.cpp's own tools assume), since a thread sharing a core
        # with other work stalls all the others. Measured here (2 vCPUs, another process busy):
        # 2 threads fell from ~3,700 to between 3 and 820 tok/s on the demo student, 1 thread kept ~3,700.
        threads = threads or max(1, (os.cpu_count() or 2) // 2)
        # A context longer than the model was trained for only wastes KV memory (and llama.cpp warns).
        self.n_ctx = min(n_ctx, _trained_context(model) or n_ctx)
        self.threads = threads
        try:
            self.llm = llama_cpp.Llama(
                model_path=model, n_ctx=self.n_ctx, n_threads=threads, n_gpu_layers=gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama.cpp could not load {model}: {exc}") from exc
        self.template = self.llm.metadata.get("tokenizer.chat_template")
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {**super().describe(), "n_ctx": self.n_ctx, "threads": self.threads}

    def _is_end(self, token: int) -> bool:
        # End-of-generation per the vocabulary: <|im_end|>, <|endoftext|> and friends.
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _generate(self, messages: Messages, options: GenerationOptions, state: Pieces) -> Iterator[str]:
        prompt = render_template(self.template, messages)
        with self._lock:
            ids = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            state.prompt_tokens = len(ids)
            if len(ids) + 1 > self.llm.n_ctx():
                raise BackendError(f"prompt of {len(ids)} tokens does not fit the context of {self.llm.n_ctx()}")
            budget = min(options.max_tokens, self.llm.n_ctx() - len(ids))
            self.llm.set_seed(options.seed)
            text = TextAssembler(lambda t: self.llm.detokenize([t]))
            state.completion_tokens = 0
            tokens = self.llm.generate(
                ids, temp=options.temperature, top_p=options.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0,
            )
            try:
                for token in tokens:
                    if self._is_end(token):
                        state.ended = True
                        break
                    state.completion_tokens += 1
                    yield text.push(token)
                    if state.completion_tokens >= budget:
                        break
            finally:
                tokens.close()
            tail = text.flush()
            if tail:
                yield tail

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()


def _trained_context(path: str) -> int | None:
    """`<arch>.context_length` from the GGUF header, read without loading the weights."""
    try:
        reader = GGUFReader(path)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        field = reader.fields.get(f"{arch}.context_length")
        return int(field.parts[-1][0]) if field is not None else None
    except (KeyError, ValueError, OSError):
        return None
