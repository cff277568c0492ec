"""GGUF models through llama.cpp (llama-cpp-python): the offline laptop and phone runtime.

llama.cpp's `Llama` object is not thread-safe (one KV cache, one sampler), so a backend holds a
pool of them (`Backend.pool`): each answer leases a free context for its whole length and gives it
back however it ends, and a request waits only when every context is busy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
from gguf import GGUFReader

from data.prompt import render_template
from models.backends.base import Backend, BackendError, GenerationOptions, Messages, Pieces, TextAssembler
from models.backends.pool import Pool


class LlamaCppBackend(Backend):
    kind = "llamacpp"

    def __init__(self, model: str, n_ctx: int = 4096, threads: int | None = None, gpu_layers: int = 0,
                 parallel: int | None = None):
        super().__init__(model)
        if not Path(model).is_file():
            raise BackendError(f"no GGUF file at {model}")
        # llama.cpp's threads meet at spinning OpenMP barriers each layer: one thread per physical core
        # (half the logical CPUs, as llama.cpp's own tools assume), since a thread sharing a core
        # with other work stalls all the others. Measured here (2 vCPUs, another process busy):
        # 2 threads fell from ~3,700 to between 3 and 820 tok/s on the demo student, 1 thread kept ~3,700.
        threads = threads or max(1, (os.cpu_count() or 2) // 2)
        # Contexts share no barrier, so on a CPU the pool fills the logical CPUs: the weights are
        # mapped once, each context adds its KV cache. One stream of the SmolLM2 student on one of
        # 2 cores decodes ~150 tok/s, so two visitors no longer queue behind each other.
        parallel = parallel or (1 if gpu_layers else max(1, (os.cpu_count() or 1) // threads))
        # A context longer than the model was trained for only wastes KV memory (and llama.cpp warns).
        self.n_ctx = min(n_ctx, _trained_context(model) or n_ctx)
        self.threads, self.parallel = threads, parallel
        self.contexts: list[llama_cpp.Llama] = []
        for _ in range(parallel):
            self.contexts.append(self._load(model, threads, gpu_layers))
        self.llm = self.contexts[0]  # the model's metadata and vocabulary, alike in every context
        self.template = self.llm.metadata.get("tokenizer.chat_template")
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.pool = Pool(list(self.contexts))

    def _load(self, model: str, threads: int, gpu_layers: int) -> llama_cpp.Llama:
        try:
            return llama_cpp.Llama(model_path=model, n_ctx=self.n_ctx, n_threads=threads, n_gpu_layers=gpu_layers,
                                   verbose=False)
        except (ValueError, RuntimeError) as exc:
            self.close()
            raise BackendError(f"llama.cpp could not load {model}: {exc}") from exc

    def describe(self) -> dict:
        return {**super().describe(), "n_ctx": self.n_ctx, "threads": self.threads, "parallel": self.parallel}

    def _is_end(self, token: int) -> bool:
        # End-of-generation per the vocabulary: <|im_end|>, <|endoftext|> and friends.
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _generate(self, messages: Messages, options: GenerationOptions, state: Pieces) -> Iterator[str]:
        llm: llama_cpp.Llama = state.slot  # the context this request leased from the pool
        prompt = render_template(self.template, messages)
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        state.prompt_tokens = len(ids)
        if len(ids) + 1 > llm.n_ctx():
            raise BackendError(f"prompt of {len(ids)} tokens does not fit the context of {llm.n_ctx()}")
        budget = min(options.max_tokens, llm.n_ctx() - len(ids))
        llm.set_seed(options.seed)
        text = TextAssembler(lambda t: llm.detokenize([t]))
        state.completion_tokens = 0
        tokens = llm.generate(ids, temp=options.temperature, top_p=options.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0)
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
        contexts, self.contexts, self.llm = getattr(self, "contexts", []), [], None
        for context in contexts:
            context.close()


def _trained_context(path: str) -> int | None:
    """`<arch>.context_length` from the GGUF header, read without loading the weights."""
    try:
        reader = GGUFReader(path)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        field = reader.fields.get(f"{arch}.context_length")
        return int(field.parts[-1][0]) if field is not None else None
    except (KeyError, ValueError, OSError):
        return None
