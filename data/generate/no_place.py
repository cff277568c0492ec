"""Requests about a cell with no known place never reach a writer model.

A model asked to describe a cell with no POI can only invent one (the prompt's place list is empty,
and writer_prompt names a main place), so those requests (data.sampling's `unknown_rate`) get the
template's refusal, the same sentence a template corpus teaches; the rest go to the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from data.generate.base import (
    GenerationError,
    GenerationRequest,
    GenerationResult,
    Generator,
    ProgressCallback,
)
from data.generate.template import TemplateGenerator


class RefusesNoPlace:
    """A writer whose no-place requests are answered offline by the template's refusal."""

    def __init__(self, inner: Generator):
        self.inner = inner
        self.refuser = TemplateGenerator()
        self.name = inner.name

    def __getattr__(self, name: str):  # accounting, close, key_for: the wrapped writer's
        return getattr(self.inner, name)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.inner.generate(request) if request.pois else self.refuser.generate(request)

    def generate_many(
        self, requests: Iterable[GenerationRequest], progress: ProgressCallback | None = None
    ) -> Iterator[tuple[GenerationRequest, GenerationResult | GenerationError]]:
        placed = []
        for request in requests:
            if request.pois:
                placed.append(request)
            else:
                if progress:
                    progress(1)
                yield request, self.refuser.generate(request)
        yield from self.inner.generate_many(placed, progress)
