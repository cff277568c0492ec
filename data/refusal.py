"""What the guide says about a cell where it knows no place, and how such an answer is recognised.

The corpus teaches the refusal on cells with no POI near (data.sampling.unknown_cells); the
validator accepts those samples only when their text passes `refusal_problems`, and bench.facts
scores a model's answers on unknown pins with the same detector, so the two cannot disagree.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from data.vocab import count_words, split_sentences

if TYPE_CHECKING:  # data.validate calls this module for the samples that have no place
    from data.validate import PlaceNames

# One short sentence each, naming no place and no locality: a model that learns to copy the
# prompt's locality into a refusal ("I know nothing about Sydney") would be naming a place.
REFUSALS = (
    "I know nothing about this spot, so I cannot describe it.",
    "I do not know anything about this place.",
    "I have no knowledge of any place here.",
)
MAX_WORDS = 20

_NOT_KNOWING = re.compile(
    r"\b(?:know(?:s)? (?:nothing|of no)|(?:do|does|did)(?: not|n['’]t) know|(?:have|has) no "
    r"(?:knowledge|information|facts?)|nothing (?:is )?known|(?:am|is) not familiar)\b",
    re.IGNORECASE,
)
_CAPITALISED = re.compile(r"(?<![\w'’-])[A-Z][\w'’-]*")
_FIRST_PERSON = re.compile(r"I(?:['’](?:m|ve|d|ll))?")


def refusal_problems(text: str, names: PlaceNames) -> list[str]:
    """Why `text` is not a plain refusal, each 'category: detail'; empty when it is one.

    A refusal is one sentence of at most MAX_WORDS words that says it knows nothing (there),
    names no POI of `names`, and has no capitalised word but a sentence's first word and "I": any
    other proper noun (a locality, a street, an invented place) is something claimed about the spot.
    """
    text = text.strip()
    if not text:
        return ["empty: no text"]
    problems = []
    sentences = split_sentences(text)
    if len(sentences) != 1:
        problems.append(f"sentences: {len(sentences)}, a refusal is one")
    words = count_words(text)
    if words > MAX_WORDS:
        problems.append(f"length: {words} words, a refusal has at most {MAX_WORDS}")
    if not _NOT_KNOWING.search(text):
        problems.append("no refusal: does not say it knows nothing here")
    named = sorted({p.name for p in names.mentioned(text)})
    if named:
        problems.append(f"wrong place: names {named}")
    proper = [m.group() for s in sentences for m in _CAPITALISED.finditer(s)
              if m.start() > 0 and not _FIRST_PERSON.fullmatch(m.group())]
    if proper:
        problems.append(f"proper noun: {proper}")
    return problems


def is_refusal(text: str, names: PlaceNames) -> bool:
    return not refusal_problems(text, names)
