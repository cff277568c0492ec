"""The one interface every corpus writer implements, and the request it answers.

A request is one training sample before its text exists: a Plus Code cell (with the POIs in it),
the visitor's interests and a style. A generator turns it into a description. Backends differ only
in who writes: our templates offline, Claude, or any OpenAI-compatible server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from data.poi import POI


@dataclass(frozen=True)
class Revision:
    """A text the writer wrote for a request and the reasons it was rejected: sent back with the
    request so the same writer can write it again (data.generate.rewrite)."""

    text: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class GenerationRequest:
    plus_code: str  # full 10-digit code of the cell
    short_code: str
    locality: str  # the geo layer's locality for the short code, e.g. "Sydney"
    pois: tuple[POI, ...]  # every POI whose plus_code is this cell; the first is the main one
    interests: tuple[str, ...]
    style: str
    country: str = "Australia"
    language: str = "English"
    seed: int = 0  # varies wording between samples of the same cell; backends may ignore it
    revision: Revision | None = None  # a rejected earlier try, to be rewritten; writers that cannot revise ignore it

    @property
    def poi_ids(self) -> list[str]:
        return [p.id for p in self.pois]


@dataclass
class GenerationResult:
    text: str
    model: str  # what wrote it: "template-v1", "claude-...", a served model id
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False  # answered from the on-disk cache, so it cost nothing this run
    attempts: int = 1
    extra: dict = field(default_factory=dict)


class GenerationError(RuntimeError):
    """A request that failed for good (after retries), with the reason in the message."""


ProgressCallback = Callable[[int], None]  # called with the number of requests just finished


class Generator(Protocol):
    name: str

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Write one description; raise GenerationError when it cannot."""
        ...

    def generate_many(
        self, requests: Iterable[GenerationRequest], progress: ProgressCallback | None = None
    ) -> Iterator[tuple[GenerationRequest, GenerationResult | GenerationError]]:
        """Answer many requests (possibly concurrently), yielding each with its outcome.

        Order of the yielded pairs may differ from the input order; a failed request yields its
        GenerationError instead of raising, so one bad sample never loses the rest of a run.
        """
        ...


def generate_sequentially(
    generator: Generator,
    requests: Iterable[GenerationRequest],
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[GenerationRequest, GenerationResult | GenerationError]]:
    """`generate_many` for backends with nothing to gain from concurrency."""
    for request in requests:
        try:
            outcome: GenerationResult | GenerationError = generator.generate(request)
        except GenerationError as exc:
            outcome = exc
        if progress:
            progress(1)
        yield request, outcome
