"""Corpus writer backed by any OpenAI-compatible chat server (vLLM serving Qwen3, or OpenAI)."""

from __future__ import annotations

import os
from typing import Any

import openai

from data.generate import llm, retries
from data.generate.base import GenerationRequest

# vLLM accepts any key unless started with --api-key; the SDK refuses to start without one.
_NO_KEY = "EMPTY"


class OpenAIGenerator(llm.LLMGenerator):
    """A served model via `openai.OpenAI(base_url=...).chat.completions.create`.

    `disable_thinking` asks Qwen3's chat template to skip its <think> phase (vLLM's
    `chat_template_kwargs`); None turns it on for model names containing "qwen3". Other options
    are those of `llm.LLMOptions`. The request's seed is sent, so a vLLM server samples reproducibly.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        temperature: float | None = 0.7,
        disable_thinking: bool | None = None,
        **options: Any,
    ):
        super().__init__(model, llm.LLMOptions(**options))
        self.temperature = temperature
        self.disable_thinking = "qwen3" in model.lower() if disable_thinking is None else disable_thinking
        key = api_key or os.environ.get("OPENAI_API_KEY") or _NO_KEY
        # max_retries=0: retries happen in llm.LLMGenerator, where they are counted and cached.
        self._client = openai.OpenAI(
            api_key=key, base_url=base_url, timeout=self.options.timeout, max_retries=0
        )

    def _sampling_params(self, request: GenerationRequest) -> dict[str, Any]:
        return super()._sampling_params(request) | {
            "temperature": self.temperature,
            "disable_thinking": self.disable_thinking,
        }

    def _send(self, system: str, turns: list[dict[str, str]], request: GenerationRequest) -> llm.WriterReply:
        extra: dict[str, Any] = {}
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        if self.disable_thinking:
            extra["extra_body"] = {"chat_template_kwargs": {"enable_thinking": False}}
        response = self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": system}, *turns],
            max_tokens=self.options.max_tokens,
            seed=request.seed,
            **extra,
        )
        return self._read(response)

    def _read(self, response: object) -> llm.WriterReply:
        choices = llm.field_of(response, "choices")
        if not isinstance(choices, list) or not choices:
            raise retries.MalformedResponse(f"no choices in {type(response).__name__}")
        message = llm.field_of(choices[0], "message")
        if message is None:
            raise retries.MalformedResponse("first choice has no message")
        content = llm.field_of(message, "content")
        if content is not None and not isinstance(content, str):
            raise retries.MalformedResponse(f"message content is {type(content).__name__}, not text")
        usage = llm.field_of(response, "usage")
        input_tokens, output_tokens = (
            llm.token_count(usage, "prompt_tokens"),
            llm.token_count(usage, "completion_tokens"),
        )
        served = llm.field_of(response, "model")
        return llm.WriterReply(
            text=content or "",  # None (e.g. cut off while thinking) is judged as empty by _check
            model=served if isinstance(served, str) and served else self.model,
            input_tokens=input_tokens or 0,
            output_tokens=output_tokens or 0,
            stop_reason=llm.field_of(choices[0], "finish_reason"),
            usage_reported=input_tokens is not None and output_tokens is not None,
        )

    def _classify(self, exc: BaseException) -> retries.Failure | None:
        return retries.classify_sdk_error(exc, openai)

    def close(self) -> None:
        self._client.close()
