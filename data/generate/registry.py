"""Pick a corpus writer by name. SDK-backed writers are imported only when asked for, so the
offline template path needs neither `anthropic` nor `openai` installed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data.generate.base import Generator
from data.generate.no_place import RefusesNoPlace
from data.generate.template import DEFAULT_OPENERS, TemplateGenerator

BACKENDS = ("template", "anthropic", "openai")
# Writers that can rewrite a rejected text when shown it with the reasons; the template writes the
# same text for the same request, so sending one back would only repeat it.
REVISING_BACKENDS = ("anthropic", "openai")
DEFAULT_CLAUDE = "claude-sonnet-5"


@dataclass(frozen=True)
class WriterOptions:
    model: str | None = None
    base_url: str | None = None
    cache_dir: Path | None = None
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 60.0
    max_tokens: int = 700
    # None leaves sampling to the server: Anthropic's current API rejects temperature outright.
    temperature: float | None = None
    price_in: float | None = None  # USD per million tokens; None uses the built-in table
    price_out: float | None = None
    # The template's opening set (data.generate.template.OPENERS); keys a corpus only when set.
    openers: str = field(default=DEFAULT_OPENERS, metadata={"keyed_when_set": True})


def make_generator(backend: str, options: WriterOptions = WriterOptions()) -> Generator:
    if backend == "template":
        return TemplateGenerator(options.openers)
    if options.openers != WriterOptions.openers:
        raise ValueError("openers is the template writer's setting; a model writer opens as it writes")
    shared = ("cache_dir", "concurrency", "max_retries", "timeout", "max_tokens", "price_in", "price_out")
    llm_options = {name: getattr(options, name) for name in shared}
    try:
        if backend == "anthropic":
            from data.generate.anthropic_writer import AnthropicGenerator

            model = options.model or DEFAULT_CLAUDE
            return RefusesNoPlace(AnthropicGenerator(
                model, base_url=options.base_url, temperature=options.temperature, **llm_options
            ))
        if backend == "openai":
            from data.generate.openai_writer import OpenAIGenerator

            if not options.base_url or not options.model:
                raise ValueError("the openai backend needs --base-url and --model")
            temperature = 0.7 if options.temperature is None else options.temperature
            return RefusesNoPlace(OpenAIGenerator(
                options.model, base_url=options.base_url, temperature=temperature, **llm_options
            ))
    except ImportError as exc:
        raise ValueError(
            f"the {backend} backend needs its SDK: pip install -e '.[generate]' ({exc})"
        ) from exc
    raise ValueError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
