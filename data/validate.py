"""Checks every generated description must pass before it enters the corpus.

A description must name its place, must not name a POI that lives in another cell (the classic
way a writer model smuggles in a wrong place), must fit its style's length band, and must state
no number or name its request did not give (data.grounding). The same
checks serve the evaluation harness later (wrong-place rate, style compliance).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property

from data.generate.base import GenerationRequest
from data.grounding import grounding_problems
from data.poi import POI
from data.refusal import refusal_problems
from data.vocab import style_problems


def _name_forms(name: str) -> list[str]:
    """A name as prose uses it: 'The Domain' also appears as 'the Domain' or just 'Domain'."""
    forms = [name]
    bare = re.sub(r"\s*\(.*?\)\s*", " ", name).strip()
    if bare != name:
        forms.append(bare)
    if bare.lower().startswith("the "):
        forms.append(bare[4:])
    # 'Theatre Royal Sydney' is 'the Theatre Royal' in a sentence set in Sydney; a one-word rest
    # ('Crown', 'The Star') or one ending in a preposition ('Museum of') is not a name by itself.
    rest = re.fullmatch(r"(?:The )?(.+) Sydney", bare)
    if rest and len(rest[1].split()) >= 2 and rest[1].split()[-1].lower() not in {"of", "in", "at"}:
        forms.append(rest[1])
    return forms


def _pattern(forms: Iterable[str], flags: int = 0) -> re.Pattern:
    alternatives = "|".join(re.escape(f) for f in sorted(set(forms), key=len, reverse=True))
    return re.compile(rf"(?<![\w]){'(?:' + alternatives + ')'}(?![\w])", flags)


class PlaceNames:
    """Every POI name of a dataset, to spot which ones a text mentions."""

    def __init__(self, pois: Iterable[POI]):
        self.pois = list(pois)

    @cached_property
    def _patterns(self) -> list[tuple[POI, re.Pattern]]:
        # Case-sensitive: 'The Gap' the headland is a name, 'the gap' in a sentence is not.
        return [(p, _pattern(_name_forms(p.name))) for p in self.pois]

    def mentioned(self, text: str) -> list[POI]:
        return [poi for poi, pat in self._patterns if pat.search(text)]


def names_poi(text: str, poi: POI) -> bool:
    return bool(_pattern(_name_forms(poi.name), re.IGNORECASE).search(text))


def foreign_places(text: str, request: GenerationRequest, names: PlaceNames) -> list[str]:
    """Names of POIs from other cells that the text mentions.

    This cell's own names are masked first, so 'Hyde Park Barracks' does not count as 'Hyde
    Park'; a neighbour that the cell's own facts name stays allowed, and so does a POI named like
    the cell's locality ('Bondi Beach' the suburb). Localities are not masked in the text: masking
    'Sydney' would hide 'Sydney Harbour Bridge' named at the Opera House.
    """
    own = {p.id for p in request.pois}
    masked = _pattern(f for p in request.pois for f in _name_forms(p.name)).sub(" ", text)
    facts = " ".join(f for p in request.pois for f in p.facts)
    localities = {request.locality, *(p.locality for p in request.pois)}
    return [
        p.name
        for p in names.mentioned(masked)
        if p.id not in own and not names_poi(facts, p) and p.name not in localities
    ]


def text_problems(text: str, request: GenerationRequest, names: PlaceNames, grounding: str = "strict") -> list[str]:
    """Why a generated description is rejected, each 'category: detail'; empty when accepted.
    `grounding` is how hard numbers and names are held to the request (data.grounding)."""
    if not text.strip():
        return ["empty: no text"]
    if not request.pois:  # a cell with no known place (data.sampling.unknown_cells): its answer is the refusal
        return refusal_problems(text, names)
    problems = []
    main = request.pois[0]
    if not names_poi(text, main):
        problems.append(f"unnamed: does not name {main.name!r}")
    foreign = foreign_places(text, request, names)
    if foreign:
        problems.append(f"wrong place: names POI(s) of another cell {sorted(set(foreign))}")
    problems += style_problems(text, request.style)
    # Another cell's name is reported once, as a wrong place, not again as an unsupported name.
    return problems + grounding_problems(text, request, grounding, also=foreign)


_WORD = re.compile(r"[a-z0-9]+")
# Short function words carry no fact; numbers always do ("1932", "134").
_MIN_LETTERS = 4


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w.isdigit() or len(w) >= _MIN_LETTERS}


def fact_present(fact: str, text: str, threshold: float = 0.8) -> bool:
    """Whether a text states a fact: most of the fact's content words and all of its numbers
    appear. Loose enough for rephrasing by a writer model, strict enough that a wrong year or
    a wrong architect fails."""
    words = _content_words(fact)
    if not words:
        return False
    found = _content_words(text)
    numbers = {w for w in words if w.isdigit()}
    return numbers <= found and len(words & found) >= threshold * len(words)


def fact_in_sentences(fact: str, sentences: list[str]) -> bool:
    """Whether one of `sentences` states `fact`. A fact is a sentence's worth: matched against a
    whole answer, the words of a short one ("It is now part of Sydney Harbour National Park") turn
    up scattered over any long answer about a harbour park."""
    return any(fact_present(fact, s) for s in sentences)


def facts_recalled(generated: str, reference: str, pois: Iterable[POI]) -> tuple[int, int]:
    """(recalled, expected): of the POI facts the reference states, how many the generated
    text states too. A model that memorised its training places recalls most of them."""
    expected = [f for poi in pois for f in poi.facts if fact_present(f, reference)]
    return sum(fact_present(f, generated) for f in expected), len(expected)
