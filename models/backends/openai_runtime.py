"""A model served over an OpenAI-compatible HTTP API (vLLM, llama.cpp's server, ...), e.g. the
full Qwen3-32B teacher on the GPU box, streamed through the official `openai` client."""

from __future__ import annotations

import os
from collections.abc import Iterator

from models.backends.base import Backend, BackendError, GenerationOptions, Messages, Pieces

_NO_KEY = "not-needed"  # local servers accept any key, the client insists on one


class OpenAIBackend(Backend):
    kind = "openai"

    def __init__(self, model: str, base_url: str, api_key: str | None = None, timeout_s: float = 120.0,
                 disable_thinking: bool | None = None, extra_body: dict | None = None):
        super().__init__(model)
        try:
            import openai
        except ImportError as exc:
            raise BackendError("the openai backend needs the openai package: pip install 'offline-tour-guide[generate]'") from exc
        self._openai = openai
        self.base_url = base_url
        # Server-specific sampling fields the OpenAI API lacks. Servers differ in their defaults:
        # llama.cpp's applies repeat_penalty 1.1 unless told {"repeat_penalty": 1.0}, which makes
        # its "greedy" answers differ from every local backend's.
        self.extra_body = dict(extra_body or {})
        # Qwen3 thinks before answering unless its template is told not to (vLLM passes these on).
        self.disable_thinking = "qwen3" in model.lower() if disable_thinking is None else disable_thinking
        self._client = openai.OpenAI(api_key=api_key or os.environ.get("OPENAI_API_KEY") or _NO_KEY,
                                     base_url=base_url, timeout=timeout_s, max_retries=1)

    def describe(self) -> dict:
        return {**super().describe(), "base_url": self.base_url}

    def _generate(self, messages: Messages, options: GenerationOptions, state: Pieces) -> Iterator[str]:
        extra = dict(self.extra_body)
        if self.disable_thinking:
            extra["chat_template_kwargs"] = {"enable_thinking": False}
        try:
            stream = self._client.chat.completions.create(
                model=self.model, messages=messages, stream=True, stream_options={"include_usage": True},
                temperature=options.temperature, top_p=options.top_p, max_tokens=options.max_tokens,
                stop=list(options.stop) or None, seed=options.seed, extra_body=extra or None,
            )
        except self._openai.OpenAIError as exc:
            raise BackendError(f"{self.base_url} refused the request: {exc}") from exc
        try:
            for event in stream:
                if event.usage is not None:
                    state.prompt_tokens = event.usage.prompt_tokens
                    state.completion_tokens = event.usage.completion_tokens
                for choice in event.choices:
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content
                    if choice.finish_reason is not None:
                        state.ended = choice.finish_reason == "stop"
        except self._openai.OpenAIError as exc:
            raise BackendError(f"{self.base_url} broke off the stream: {exc}") from exc
        finally:
            stream.close()

    def close(self) -> None:
        self._client.close()
