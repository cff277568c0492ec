"""Whether a written description states only what its request gave the writer.

A writer model embellishes: a birthday for the architect, "its 173 years", a museum that does not
exist. A student trained on those texts learns them as facts. The check here is lexical, on the two
kinds of claim that are easy to spot and costly to get wrong: numbers (years above all) and proper
names. Every number in a text, in digits or (strict) in words, must have its value among the
numbers of the request; every proper-noun phrase must be found in the request's words.

The request's words are its places' facts, their names and localities, the cell's locality, the
interests, the country and the language: what the writer was shown (data.generate.writer_prompt).

Modes:
- strict: numbers in digits and in words ("fourteen", "two hundred"); a name phrase must occur whole,
  as consecutive words of the request ("King David" fails, "the Opera House" passes), give or take
  the cell's locality or country run into it at either end ("Kirribilli House Sydney").
- lenient: numbers in digits only; each capitalised word of a phrase must occur somewhere in the
  request, so a recombination ("Utzon's Opera House") passes and a word from nowhere fails.
- off: no check.

What it cannot see: a claim in lower-case words ("the oldest", "burnt down", "designed by a woman"),
a number or name of the request put where it does not belong ("opened in 1957" when 1957 was the
competition), a paraphrase that changes meaning, and a lone capitalised word that opens a sentence
("Napoleon slept here."), which cannot be told from an ordinary first word without a dictionary.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from data.generate.base import GenerationRequest
from data.vocab import split_sentences

GROUNDING_MODES = ("strict", "lenient", "off")

# Capitalised words that claim nothing about a place: the first person, and the app's own name for
# the codes in every prompt. Kept short on purpose: every word added here is a word a writer may
# invent freely.
GENERIC_WORDS = frozenset({"i", "i'm", "i've", "i'd", "i'll", "plus", "code", "codes"})
# Lower-case words that may sit inside a name ("Museum of Contemporary Art", "Bennelong Point of
# the harbour" is cut at "of the" only when what follows is not capitalised).
_CONNECTORS = frozenset({"of", "the", "de", "la", "le", "du", "des", "da", "di", "van", "von", "der", "den", "y", "&"})
_DETERMINERS = frozenset({"the", "a", "an"})
_TITLES = frozenset({"st", "mt", "dr", "mr", "mrs", "ms", "sr", "jr"})

_UNITS = {w: n for n, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
     "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"])}
_TENS = {w: 10 * n for n, w in enumerate(
    ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], start=2)}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORDS = {**_UNITS, **_TENS, **_SCALES}

# A number in digits: 1973, 2,500, 1.5, 1880s, 19th, 503m; a scale word after it multiplies it.
_DIGITS = re.compile(
    r"(?<![\w.,])(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?(?!\d)[^\W\d_]*(?:\s+(hundred|thousand|million|billion)\b)?",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"[^\W\d_][\w'’-]*|&")
_OPENS_CLAUSE = re.compile(r"(?:^|[.!?:;\"“‘(\[—–*#•]|\s['‘-])\W*$")
_FOLD = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "đ": "d", "ł": "l", "Ł": "L", "’": "'"})


@dataclass(frozen=True)
class Unsupported:
    """One span of a text that the request does not support."""

    kind: str  # "number", "name" or "code" (a Plus Code)
    span: str  # as the text has it

    def reason(self) -> str:
        return f"grounding: {self.kind} {self.span!r} is not in the facts"


def fold(text: str) -> str:
    """Lower case without accents, possessives or punctuation: 'Jørn Utzon's' -> 'jorn utzon'."""
    text = unicodedata.normalize("NFKD", text.translate(_FOLD))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"'s\b|(?<=s)'(?!\w)", "", text)
    return " ".join(re.findall(r"[^\W_]+", text))


def request_texts(request: GenerationRequest) -> list[str]:
    """Everything the writer was told about the place, one piece a string."""
    pieces = [request.locality, request.country, request.language, *request.interests]
    for poi in request.pois:
        pieces += [poi.name, poi.locality, *poi.interests, *poi.facts]
    return [p for p in pieces if p]


# -- numbers --------------------------------------------------------------------------------------


def _digit_numbers(text: str) -> Iterator[tuple[float, str]]:
    for m in _DIGITS.finditer(text):
        value = float(m[1].replace(",", "") + (m[2] or ""))
        if m[3]:
            value *= _SCALES[m[3].lower()]
        yield value, m[0]


def _word_numbers(text: str) -> Iterator[tuple[float, str]]:
    """Numbers spelled out, a run at a time ("two hundred and fifty", "fourteen", "a million").
    A lone "one" is left out: "one of the oldest" counts nothing."""
    words = [(m[0].lower(), m) for m in re.finditer(r"[A-Za-z]+", text)]
    k = 0
    while k < len(words):
        if words[k][0] not in _NUMBER_WORDS:
            k += 1
            continue
        start, total, current = k, 0, 0
        while k < len(words) and (k == start or _joined(text, words[k - 1][1], words[k][1])) and (
                words[k][0] in _NUMBER_WORDS or (words[k][0] == "and" and words[k - 1][0] in _SCALES
                                                 and k + 1 < len(words) and words[k + 1][0] in _NUMBER_WORDS)):
            word = words[k][0]
            if word in _SCALES:
                if _SCALES[word] == 100:
                    current = max(current, 1) * 100
                else:
                    total, current = total + max(current, 1) * _SCALES[word], 0
            elif word != "and":
                current += _NUMBER_WORDS[word]
            k += 1
        span = text[words[start][1].start(): words[k - 1][1].end()]
        if span.lower() != "one":
            yield float(total + current), span


def _joined(text: str, before: re.Match, after: re.Match) -> bool:
    """Whether two words are one number's ("twenty-five", "two hundred"), not a list's ("two, three")."""
    return re.fullmatch(r"[\s-]+", text[before.end(): after.start()]) is not None


_PLUS_CODE = re.compile(r"(?<![\w+])[23456789CFGHJMPQRVWX]{2,8}\+[23456789CFGHJMPQRVWX]*(?![\w+])")


def _without_codes(text: str) -> str:
    """The text with its Plus Codes blanked: their digits and letters are an address, not a number
    or a name (unsupported_codes judges them)."""
    return _PLUS_CODE.sub(" ", text)


def unsupported_codes(text: str, request: GenerationRequest) -> list[Unsupported]:
    """Plus Codes other than the request's own: an address the writer was not given."""
    own = {request.plus_code.upper(), request.short_code.upper()}
    return [Unsupported("code", m[0]) for m in _PLUS_CODE.finditer(text) if m[0].upper() not in own]


def unsupported_numbers(text: str, request: GenerationRequest, spelled: bool = True) -> list[Unsupported]:
    readers = (_digit_numbers, _word_numbers) if spelled else (_digit_numbers,)
    known = {value for piece in request_texts(request) for read in (_digit_numbers, _word_numbers)
             for value, _ in read(piece)}
    text = _without_codes(text)
    return [Unsupported("number", span) for read in readers for value, span in read(text) if value not in known]


# -- names ----------------------------------------------------------------------------------------


def _phrases(sentence: str) -> Iterator[tuple[list[re.Match], bool]]:
    """Runs of capitalised words ("Museum of Contemporary Art"), each with whether it opens the
    sentence (or a clause after a colon, bracket or quote), where any word is capitalised."""
    run: list[re.Match] = []
    opens = False
    last_end = 0
    for m in _TOKEN.finditer(sentence):
        word, gap = m[0], sentence[last_end: m.start()]
        # A full stop ends a name (split_sentences keeps "World War I. It was" together, an initial?),
        # except after a title: "St. James".
        joined = bool(run) and (gap == " " or (gap == ". " and run[-1][0].lower() in _TITLES))
        capital = word[0].isupper()
        if run and joined and (capital or word.lower() in _CONNECTORS):
            run.append(m)
        else:
            if run:
                yield run, opens
            run, opens = ([m], _OPENS_CLAUSE.search(sentence[: m.start()]) is not None) if capital else ([], False)
        last_end = m.end()
    if run:
        yield run, opens


def _generic(word: str) -> bool:
    return word.lower().replace("’", "'") in GENERIC_WORDS


def _trim(words: list[re.Match]) -> list[re.Match]:
    """A phrase without its leading article, generic words at either end and trailing connectors:
    'The Rocks of' -> 'Rocks', 'Plus Code Sydney' -> 'Sydney'."""
    while words and (words[0][0].lower() in _DETERMINERS | _CONNECTORS or _generic(words[0][0])):
        words = words[1:]
    while words and (words[-1][0].lower() in _CONNECTORS or _generic(words[-1][0])):
        words = words[:-1]
    return words


class _Source:
    """The request's words, folded, for looking phrases up; `places` are its locality and country
    names, which a writer may run into a name ("Kirribilli House Sydney")."""

    def __init__(self, pieces: Iterable[str], places: Iterable[str]):
        folded = [fold(p) for p in pieces]
        self.joined = " | " + " | ".join(folded) + " | "
        self.words = {w for p in folded for w in p.split()}
        self.places = sorted({fold(p) for p in places if p}, key=len, reverse=True)

    def _found(self, claim: str, whole: bool) -> bool:
        if whole:
            return f" {claim} " in self.joined
        return all(w in self.words or w in _CONNECTORS for w in claim.split())

    def has(self, words: list[re.Match], whole: bool) -> bool:
        claim = fold(" ".join(w[0] for w in words))
        if not claim or self._found(claim, whole):
            return True
        for place in self.places:  # a name with the locality or country run into it, either end
            for rest in (claim.removesuffix(f" {place}"), claim.removeprefix(f"{place} ")):
                if rest != claim and self._found(rest, whole):
                    return True
        return False


def unsupported_names(text: str, request: GenerationRequest, whole: bool = True,
                      also: Iterable[str] = ()) -> list[Unsupported]:
    """Capitalised phrases the request does not hold. `also` are names already judged elsewhere
    (another cell's POI, reported as a wrong place), which are not reported twice."""
    places = [request.locality, request.country, *(p.locality for p in request.pois)]
    source = _Source([*request_texts(request), *also], places)
    found = []
    # A line break ends a sentence and a name: a list or a heading runs into the next line without a stop.
    sentences = [s for line in _without_codes(text).splitlines() for s in split_sentences(line)]
    for sentence in sentences:
        for words, opens in _phrases(sentence):
            phrase = _trim(words)
            if not phrase or source.has(phrase, whole):
                continue
            if opens and phrase[0] == words[0]:
                # The first word of a sentence is capitalised whatever it is ("Visit Customs House"):
                # what follows it decides; alone, it is not judged at all.
                rest = _trim(phrase[1:])
                if not rest or source.has(rest, whole):
                    continue
            found.append(Unsupported("name", sentence[phrase[0].start(): phrase[-1].end()]))
    return found


# -- the check ------------------------------------------------------------------------------------


def check_mode(mode: str) -> str:
    if mode not in GROUNDING_MODES:
        raise ValueError(f"unknown grounding mode {mode!r}; choose from {list(GROUNDING_MODES)}")
    return mode


def ungrounded(text: str, request: GenerationRequest, mode: str = "strict",
               also: Iterable[str] = ()) -> list[Unsupported]:
    """Every number and name of `text` its request does not support, each once, in text order."""
    if check_mode(mode) == "off":
        return []
    strict = mode == "strict"
    spans = (unsupported_codes(text, request) + unsupported_numbers(text, request, spelled=strict)
             + unsupported_names(text, request, strict, also))
    seen, out = set(), []
    for item in sorted(spans, key=lambda u: _position(text, u.span)):
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _position(text: str, span: str) -> int:
    at = text.find(span)
    return at if at >= 0 else len(text)


def grounding_problems(text: str, request: GenerationRequest, mode: str = "strict",
                       also: Iterable[str] = ()) -> list[str]:
    """The 'grounding: ...' reasons for `text`, one per unsupported span; empty when grounded."""
    return [u.reason() for u in ungrounded(text, request, mode, also)]
