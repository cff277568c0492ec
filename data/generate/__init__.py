"""Corpus writers: offline templates, Claude, or an OpenAI-compatible server, behind one interface."""

from data.generate.base import GenerationError, GenerationRequest, GenerationResult, Generator

__all__ = ["GenerationError", "GenerationRequest", "GenerationResult", "Generator"]
