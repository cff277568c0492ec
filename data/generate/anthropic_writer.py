"""Corpus writer backed by Claude through the Anthropic Messages API."""

from __future__ import annotations

import os
from typing import Any

import anthropic

from data.generate import llm, retries
from data.generate.base import GenerationRequest


class AnthropicGenerator(llm.LLMGenerator):
    """Claude via `anthropic.Anthropic().messages.create`.

    Options beyond the ones named here (cache_dir, concurrency, max_retries, timeout, max_tokens,
    price_in, price_out, retry delays) are those of `llm.LLMOptions`.

    `temperature` exists for symmetry with the OpenAI backend but must stay None: the API version
    that anthropic SDK 2.x sends (2026-10-21) rejects every sampling parameter with HTTP 400, so
    sending one would fail every request of a run.
    """

    name = "anthropic"

    def __init__(
        self,
        model: str = "claude-sonnet-5",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        **options: Any,
    ):
        if temperature is not None:
            raise ValueError(
                "the Anthropic Messages API (version 2026-10-21, sent by anthropic SDK 2.x) rejects "
                "temperature/top_p/top_k with HTTP 400; leave temperature=None"
            )
        super().__init__(model, llm.LLMOptions(**options))
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ValueError("no Anthropic API key: pass api_key= or set ANTHROPIC_API_KEY")
        # max_retries=0: retries happen in llm.LLMGenerator, where they are counted and the cache is
        # written; the SDK retrying underneath would hide attempts and double the waits.
        self._client = anthropic.Anthropic(
            api_key=key, base_url=base_url, timeout=self.options.timeout, max_retries=0
        )

    def _send(self, system: str, turns: list[dict[str, str]], request: GenerationRequest) -> llm.WriterReply:
        message = self._client.messages.create(
            model=self.model,
            max_tokens=self.options.max_tokens,
            system=system,
            messages=turns,
        )
        return self._read(message)

    def _read(self, message: object) -> llm.WriterReply:
        content = llm.field_of(message, "content")
        if not isinstance(content, list):
            raise retries.MalformedResponse(f"no content list in {type(message).__name__}")
        texts = [llm.field_of(block, "text") for block in content if llm.field_of(block, "type") == "text"]
        if not all(isinstance(t, str) for t in texts):
            raise retries.MalformedResponse("a text block without text")
        usage = llm.field_of(message, "usage")
        input_tokens, output_tokens = llm.token_count(usage, "input_tokens"), llm.token_count(usage, "output_tokens")
        served = llm.field_of(message, "model")
        return llm.WriterReply(
            # Adaptive-thinking models put thinking blocks before the text; only text is the answer.
            text="".join(texts),
            model=served if isinstance(served, str) and served else self.model,
            input_tokens=input_tokens or 0,
            output_tokens=output_tokens or 0,
            stop_reason=llm.field_of(message, "stop_reason"),
            usage_reported=input_tokens is not None and output_tokens is not None,
        )

    def _classify(self, exc: BaseException) -> retries.Failure | None:
        return retries.classify_sdk_error(exc, anthropic)

    def close(self) -> None:
        self._client.close()
