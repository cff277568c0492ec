"""The closed vocabularies every stage shares: visitor interests and description styles.

Interests tag POIs in the dataset, are sampled into prompts, and are what the app offers as
checkboxes; styles decide the length band a description must fit. Keeping both here means the
corpus validator, the evaluation harness and the API all reject the same things.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INTERESTS: tuple[str, ...] = (
    "architecture",
    "history",
    "art",
    "food",
    "nature",
    "beaches",
    "culture",
    "shopping",
    "nightlife",
    "family",
    "sport",
    "views",
)


@dataclass(frozen=True)
class StyleSpec:
    """What a description in one style must look like.

    The bands are in words and sentences because those are what a reader notices; token counts
    depend on the tokenizer and would make the same text pass for one model and fail for another.
    """

    name: str
    summary: str  # the instruction given to the writer (human or model)
    min_words: int
    max_words: int
    min_sentences: int
    max_sentences: int
    needs_engagement: bool = False  # a question or a suggestion to the visitor


# name, summary, words (min, max), sentences (min, max)
STYLES: dict[str, StyleSpec] = {
    "brief": StyleSpec(
        "brief", "one or two sentences: what the place is and the single most useful fact", 6, 60, 1, 2),
    "stimulate": StyleSpec(
        "stimulate", "an engaging short paragraph of three to six sentences that ends with a question "
        "or a suggestion to the visitor", 30, 140, 2, 7, needs_engagement=True),
    "detailed": StyleSpec(
        "detailed", "a full paragraph that covers every fact given: history, design, what to see", 35, 320, 3, 16),
}

# Words that tie a sentence to an interest: used to rank facts for a visitor and to tag POIs
# from sources that carry no interests of their own.
INTEREST_CUES: dict[str, str] = {
    "architecture": r"architect|design|built|building|style|gothic|revival|deco|sandstone|facade|"
    r"tower|dome|spire|storey|arch(?:es|ed)?\b|brick|victorian|georgian|modernist|heritage-listed|spans?\b|steel",
    "history": r"\b1[6-9]\d\d\b|\b20[0-2]\d\b|founded|colonial|convict|first|oldest|governor|wars?\b|wartime|"
    r"history|historic|heritage|century|origin|named after|former",
    "art": r"art(?!\s+(?:deco|nouveau|moderne))\b|gallery|galleries|painting|sculpture|artist|collection|exhibition|mural|portrait",
    "food": r"food|eat|restaurant|cafe|café|seafood|market|dining|dumpling|bakery|coffee|pubs?\b|bar\b|"
    r"cuisine|chef|fish|wine|beer|yum cha",
    "nature": r"garden|park|tree|bush|plant|bird|wildlife|native|reserve|national park|walk|"
    r"track|cliff|rock|harbour|figs?\b|botanic",
    "beaches": r"beach|surf|swim|sand\b|sands\b|sandy|pool|wave|bay|coves?\b|ocean|rock pool|lifesav",
    "culture": r"museum|theatre|performance|concert|festival|culture|aboriginal|indigenous|gadigal|"
    r"church|cathedral|library|music|opera",
    "shopping": r"shop|stores?\b|boutique|arcade|market|stall|retail|mall|fashion|souvenir",
    "nightlife": r"night|bar\b|pubs?\b|club|live music|cocktail|late\b|evening|hotel",
    "family": r"child|children|kids|family|families|play|zoo|aquarium|picnic|animal|ride",
    "sport": r"sport|cricket|rugby|football|stadium|ground|race|olympic|match|game|athlet|seats",
    "views": r"view|lookout|panoram|overlook|vista|skyline|sunset|sunrise|vantage|summit|height",
}
# Cues match at the start of a word ("architect" finds "architects"; "tree" skips "Street").
_INTEREST_CUE_RE = {k: re.compile(rf"\b(?:{v})", re.IGNORECASE) for k, v in INTEREST_CUES.items()}



def interests_in(text: str) -> tuple[str, ...]:
    """Interests whose cue words occur in `text`, in vocabulary order."""
    return tuple(i for i in INTERESTS if _INTEREST_CUE_RE[i].search(text))


# Imperative openings that count as "a suggestion to the visitor" in the stimulate style.
_SUGGESTION = re.compile(
    r"\b(try|look|take|stop|walk|wander|visit|head|come|stay|bring|plan|find|grab|pause|"
    r"climb|book|join|watch|catch|see|explore|linger|picture|imagine|listen|spend|make time|"
    r"don't miss|do not miss|consider|why not)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_INITIAL = re.compile(r"[A-Z]")
_ABBREVIATIONS = {"st", "mt", "dr", "mr", "mrs", "ms", "no", "e.g", "i.e", "vs", "approx", "c", "ca"}
_WORD = re.compile(r"[\w'’-]+")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def split_sentences(text: str) -> list[str]:
    """Sentences as a reader sees them: initials ("J. F. Archibald") and abbreviations ("St.") do
    not end one, and a last sentence without its full stop is still one."""
    stripped = " ".join(text.split())
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(stripped):
        before = stripped[start: m.start()].rsplit(None, 1)[-1] if stripped[start: m.start()].strip() else ""
        if m.group().startswith(".") and (_INITIAL.fullmatch(before) or before.lower() in _ABBREVIATIONS):
            continue
        sentences.append(stripped[start: m.end()].strip())
        start = m.end()
    rest = stripped[start:].strip()
    return [s for s in sentences if s] + ([rest] if rest else [])


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def style_problems(text: str, style: str) -> list[str]:
    """Reasons why `text` does not fit `style`, each 'category: detail'; empty when it fits."""
    spec = STYLES[style]
    words, sentences = count_words(text), count_sentences(text)
    problems = []
    if not spec.min_words <= words <= spec.max_words:
        problems.append(f"length: {words} words, {style} needs {spec.min_words}-{spec.max_words}")
    if not spec.min_sentences <= sentences <= spec.max_sentences:
        problems.append(
            f"sentences: {sentences}, {style} needs {spec.min_sentences}-{spec.max_sentences}"
        )
    if spec.needs_engagement and "?" not in text and not _SUGGESTION.search(text):
        problems.append(f"engagement: {style} needs a question or a suggestion to the visitor")
    return problems


def check_interests(interests: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validated, de-duplicated interests in vocabulary order; raises ValueError otherwise."""
    if not interests:
        raise ValueError("interests must not be empty")
    unknown = sorted(set(interests) - set(INTERESTS))
    if unknown:
        raise ValueError(f"unknown interest(s) {unknown}; choose from {list(INTERESTS)}")
    return tuple(i for i in INTERESTS if i in interests)


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    return style
