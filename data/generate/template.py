"""The offline corpus writer: our own sentence patterns around the dataset's facts, nothing else.

Deterministic for a request (its seed picks the wording), so the corpus is reproducible and the
proxy teacher learns the dataset's facts and not a writer model's embellishments. Interests
decide which facts come first: a history lover hears the dates, an architecture lover the design.
Whatever the interests, the short styles state the place's most notable fact (a year, who designed
or built it, or what it is): a visitor who asked about the view still hears when the Opera House
was designed and by whom. A cell with no place gets the refusal, one plain sentence (data.refusal).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator

from data.generate.base import (
    GenerationError,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
    generate_sequentially,
)
from data.poi import POI
from data.refusal import REFUSALS
from data.vocab import STYLES, interests_in

VERSION = "template-v4"

# How a description opens: a table of opening sets, picked by the writer's `openers`. `varied`
# (template-v4's) opens with six different words. Greedy decoding compares the refusal's first
# token ("I", shared by every refusal) with the best single other token, so with the describing
# mass split six ways, 24 of near-miss-9's 26 greedy refusals of known places had P(refusal) < 0.5
# (docs/results/refusal-margin-nearmiss-9-first5.md). `one-word` opens every description with
# "You", so describing and refusing each sit on one token and greedy decoding follows P(refusal).
DEFAULT_OPENERS = "varied"
OPENERS = {
    DEFAULT_OPENERS: (
        "Your pin is on {name}, in {locality}.",
        "You are standing at {name} in {locality}.",
        "This spot in {locality} is {name}.",
        "Right here is {name}, one of the places that give {locality} its character.",
        "The place at your pin is {name}, in {locality}.",
        "Welcome to {name} in {locality}.",
    ),
    "one-word": (
        "You are on {name}, in {locality}.",
        "You are standing at {name} in {locality}.",
        "You are in {locality}, at {name}.",
        "You are right at {name}, one of the places that give {locality} its character.",
        "You have found {name}, in {locality}.",
        "You are now at {name} in {locality}.",
    ),
}


def openings(name: str) -> tuple[str, ...]:
    """OPENERS[name], or a ValueError that lists the sets."""
    if name not in OPENERS:
        raise ValueError(f"unknown openers {name!r}; choose {', '.join(OPENERS)}")
    return OPENERS[name]


_INTEREST_LEADS = {
    "architecture": "For an eye on buildings, {name} has plenty to study.",
    "history": "{name} has a long story to tell.",
    "art": "Art lovers will find {name} worth the stop.",
    "food": "{name} is a good place to think about food.",
    "nature": "{name} is a welcome patch of nature.",
    "beaches": "{name} is all about sand and water.",
    "culture": "{name} is a place of culture.",
    "shopping": "{name} is made for browsing.",
    "nightlife": "{name} comes alive after dark.",
    "family": "{name} works well for a family outing.",
    "sport": "{name} matters to sport fans.",
    "views": "{name} is a place for views.",
}
_ENGAGE = {
    "architecture": "Walk all the way around and notice how the details change as the light moves.",
    "history": "Pause for a moment and picture this spot as it was in {year}.",
    "art": "Take your time here: which work catches your eye first?",
    "food": "Come hungry and try something you have never eaten before.",
    "nature": "Slow down and listen: how many different birds can you hear?",
    "beaches": "Bring a towel, and swim between the flags if the lifesavers are out.",
    "culture": "See what is on while you are here: what would you pick?",
    "shopping": "Leave time to browse: what will you take home?",
    "nightlife": "Come back after dark to see it at its liveliest.",
    "family": "Bring the children: which part do you think they will like best?",
    "sport": "Try to catch an event here: can you imagine the roar of a full crowd?",
    "views": "Find a spot with a clear outlook and take in the view: what can you pick out first?",
}
_CLOSERS = (
    "It is a rewarding stop for anyone interested in {interests}.",
    "Give it time if you came for {interests}.",
    "For a visitor who cares about {interests}, it repays a careful look.",
)
_NEIGHBOURS = "In the same spot you will also find {names}."


def _score(fact: str, interests: Iterable[str]) -> int:
    # Interests a fact speaks to lead the description, so a history lover hears dates first.
    return len(set(interests_in(fact)) & set(interests))


def ranked_facts(poi: POI, interests: Iterable[str]) -> list[str]:
    """The POI's facts, those matching the requested interests first, else dataset order."""
    return ranked_facts_of(list(poi.facts), interests)


_MAKERS = re.compile(r"\b(designed|architect|built|builders?|engineer|founded|commissioned)\b", re.IGNORECASE)


def notable_fact(poi: POI, interests: Iterable[str]) -> str:
    """The fact a short answer must not leave out: one that dates the place or names its maker,
    the interests choosing among those; without any, what the place is (the dataset's first fact)."""
    marked = [f for f in poi.facts if _earliest_year([f]) or _MAKERS.search(f)]
    return ranked_facts_of(marked, interests)[0] if marked else poi.facts[0]


def ranked_facts_of(facts: list[str], interests: Iterable[str]) -> list[str]:
    interests = list(interests)
    order = sorted(range(len(facts)), key=lambda k: (-_score(facts[k], interests), k))
    return [facts[k] for k in order]


def _sentence(fact: str) -> str:
    fact = fact.strip()
    return fact if fact[-1:] in ".!?" else fact + "."


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _earliest_year(facts: Iterable[str]) -> str | None:
    years = [int(y) for f in facts for y in re.findall(r"\b(1[6-9]\d\d|20[0-2]\d)\b", f)]
    return str(min(years)) if years else None


def write(request: GenerationRequest, openers: str = DEFAULT_OPENERS) -> str:
    """The description for one request, from facts only, opened from OPENERS[openers]."""
    starts = openings(openers)
    if request.style not in STYLES:
        raise GenerationError(f"unknown style {request.style!r}")
    rng = random.Random(request.seed)
    if not request.pois:  # whatever the style: a long answer about nothing could only be invented
        return rng.choice(REFUSALS)
    main = request.pois[0]
    notable = notable_fact(main, request.interests)
    facts = [notable, *(f for f in ranked_facts(main, request.interests) if f != notable)]
    matching = [i for i in request.interests if i in main.interests] or list(main.interests)
    # The opening names the locality of the prompt's short code, which the model can copy, not the
    # POI's suburb, which it would have to memorise per cell: the template-v2 model got the suburb
    # wrong for 1 place in 25, and several suburbs (The Rocks, Moore Park) are places of their own.
    # "Sydney Opera House in Sydney" says nothing twice.
    locality = "the city" if request.locality.lower() in main.name.lower() else request.locality
    values = {"name": main.name, "locality": locality, "interests": _join_words(list(request.interests))}
    opener = rng.choice(starts).format(**values)
    others = [p.name for p in request.pois[1:]]

    if request.style == "brief":
        return f"{opener} {_sentence(facts[0])}"
    if request.style == "stimulate":
        lead_interest = rng.choice(matching)
        lead = _INTEREST_LEADS[lead_interest].format(**values)
        body = [_sentence(f) for f in facts[:3]]
        year = _earliest_year(main.facts)
        engage_interest = lead_interest if (lead_interest != "history" or year) else "views"
        engage = _ENGAGE[engage_interest].format(year=year)
        return " ".join([opener, lead, *body, engage])
    # detailed: every fact, then what shares the cell, then why this visitor should care.
    parts = [opener, *(_sentence(f) for f in facts)]
    if others:
        parts.append(_NEIGHBOURS.format(names=_join_words(others)))
        for poi in request.pois[1:]:
            parts += [_sentence(f) for f in ranked_facts(poi, request.interests)[:2]]
    parts.append(rng.choice(_CLOSERS).format(**values))
    return " ".join(parts)


class TemplateGenerator:
    """`Generator` over `write`; free, offline and instant."""

    name = "template"

    def __init__(self, openers: str = DEFAULT_OPENERS):
        openings(openers)  # an unknown set fails here, before any request is written
        self.openers = openers
        # The writer each row records: template-v4's texts keep its name.
        self.version = VERSION if openers == DEFAULT_OPENERS else f"{VERSION}/{openers}"

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return GenerationResult(text=write(request, self.openers), model=self.version)

    def generate_many(
        self, requests: Iterable[GenerationRequest], progress: ProgressCallback | None = None
    ) -> Iterator[tuple[GenerationRequest, GenerationResult | GenerationError]]:
        return generate_sequentially(self, requests, progress)
