"""The prompt a writing model (Claude, Qwen3-32B on vLLM) gets for one corpus sample.

The wording lives in `prompts/*.txt` so that `snapshot.json` can hash it: a changed prompt is a
changed dataset, and the response cache keys on the rendered text, so it never serves stale answers.
"""

from __future__ import annotations

from pathlib import Path

from data.generate.base import GenerationRequest
from data.vocab import STYLES

PROMPT_DIR = Path(__file__).with_name("prompts")
TEMPLATE_FILES = (PROMPT_DIR / "system.txt", PROMPT_DIR / "user.txt")
# The turn that sends a rejected text back to its writer with the reasons (data.generate.rewrite).
REWRITE_FILE = PROMPT_DIR / "rewrite.txt"


def _describe(request: GenerationRequest) -> str:
    blocks = []
    for poi in request.pois:
        facts = "\n".join(f"  - {fact}" for fact in poi.facts)
        tags = ", ".join(poi.interests)
        blocks.append(f"- {poi.name} ({poi.locality}; good for: {tags})\n{facts}")
    return "\n".join(blocks)


def render(request: GenerationRequest) -> tuple[str, str]:
    """(system, user) messages for one request's first try."""
    system, user = (path.read_text(encoding="utf-8").strip() for path in TEMPLATE_FILES)
    values = _values(request)
    return system.format(**values), user.format(**values)


def conversation(request: GenerationRequest) -> tuple[str, list[dict[str, str]]]:
    """(system, chat turns) for one request: the user message, and for a rewrite the rejected text
    as the writer's own answer followed by the reasons it was rejected."""
    system, user = render(request)
    turns = [{"role": "user", "content": user}]
    if request.revision is not None:
        reasons = "\n".join(f"- {reason}" for reason in request.revision.reasons)
        follow_up = REWRITE_FILE.read_text(encoding="utf-8").strip().format(**_values(request), reasons=reasons)
        turns += [{"role": "assistant", "content": request.revision.text}, {"role": "user", "content": follow_up}]
    return system, turns


def _values(request: GenerationRequest) -> dict[str, object]:
    spec = STYLES[request.style]
    return {
        "country": request.country,
        "language": request.language,
        "short_code": request.short_code,
        "locality": request.locality,
        "interests": ", ".join(request.interests),
        "style": spec.name,
        "style_summary": spec.summary,
        "min_words": spec.min_words,
        "max_words": spec.max_words,
        "min_sentences": spec.min_sentences,
        "max_sentences": spec.max_sentences,
        "places": _describe(request),
        "main_name": request.pois[0].name,
    }
