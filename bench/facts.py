"""Right facts, right place: every place the served model knows, asked through the app's own API
as a visitor would ask, and each answer checked against the POI file.

Used by bench.load (docs/results/app.md). For each known place (GET /coverage) and each style, one
POST /tour-guide with the place's own interests, the pin either on the place or `offset_m` from it
in a seeded direction (people stand in front of things). The model's text (`description`, not the
app's lead line, which names the place by itself) is scored:
- names: it names the place the app answered for;
- own fact: one of its sentences states a fact of that place (data.validate.fact_present: the
  fact's numbers and most of its content words);
- other fact: one of its sentences states a fact of another place, or it names a POI of another cell;
- answered for: the app chose the place the pin was dropped beside (a nearer known place may win).

Unknown pins (`measure_unknown`): a seeded set of pins with no known place within 500 m, in the POIs'
region and near cities abroad, each in a cell the corpus's hash puts in test (never trained). Each is
planned by the app (TourGuide.plan: the pin's own cell) and answered by the model alone, with no app
notice; refused: the answer passes data.refusal.refusal_problems (one sentence of at most 20 words
that says it knows nothing, names no POI and no other proper noun).
"""

from __future__ import annotations

import itertools
import json
import random
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from app.coverage import Coverage
from app.service import TourGuide, TourRequest
from data.generate.base import GenerationRequest
from data.geo import Gazetteer, Place, block_of, moved
from data.poi import POI, SYDNEY, load_pois
from data.refusal import refusal_problems
from data.sampling import NEAR_MAX_M, SamplingConfig, split_of, unknown_cells
from data.validate import PlaceNames, fact_in_sentences, fact_present, foreign_places, names_poi
from data.vocab import INTERESTS, STYLES, count_words, split_sentences
from models.backends import open_backend

ABROAD_M = 100_000.0  # an unknown pin this far from every known place is near a city abroad
# Unknown pins this close to a known place share the leading characters of its short code: the
# hardest to tell from it, and as close as the corpus draws its near misses.
NEAR_MISS_M = NEAR_MAX_M
# The ship corpus's split hash (configs/smollm2-ship.toml: seed 0, 10% test; a test holds them equal).
SHIP_SAMPLING = SamplingConfig()


@dataclass(frozen=True)
class Check:
    poi_id: str
    style: str
    answered_for: str | None
    names: bool
    own_fact: bool
    other_facts: tuple[str, ...]  # ids of the other places whose facts or names the text states
    refused: bool  # a plain refusal (data.refusal) for a place it should know: the cost of teaching refusals
    words: int
    text: str

    @property
    def beside(self) -> bool:
        return self.answered_for == self.poi_id

    @property
    def missed(self) -> bool:
        return not (self.names and self.own_fact) or bool(self.other_facts) or self.refused

    def record(self) -> dict:
        """What the report keeps: the model's text only where it missed, for a reader to judge."""
        row = asdict(self)
        return row if self.missed else {k: v for k, v in row.items() if k != "text"}


def other_places(text: str, sentences: list[str], poi: POI, pois: dict[str, POI],
                 names: PlaceNames) -> tuple[str, ...]:
    """Other places the text (split into `sentences`) speaks of: a POI of another cell named, or a
    fact of one stated that this place's own facts do not also state."""
    cell = tuple(p for p in pois.values() if p.plus_code == poi.plus_code)
    request = GenerationRequest(poi.plus_code, "", poi.locality, cell, (), "brief")
    named = {p.id for p in pois.values() if p.name in set(foreign_places(text, request, names))}
    own = " ".join(f for p in cell for f in p.facts)
    stated = {p.id for p in pois.values() if p.plus_code != poi.plus_code
              and any(fact_in_sentences(f, sentences) and not fact_present(f, own) for f in p.facts)}
    return tuple(sorted(named | stated))


def check(answer: dict, asked: POI, pois: dict[str, POI], names: PlaceNames, style: str) -> Check:
    chosen = (answer.get("answered_for") or {}).get("poi_id")
    place = pois.get(chosen, asked)
    text = answer.get("description") or ""
    sentences = split_sentences(text)
    return Check(asked.id, style, chosen, names_poi(text, place), any(fact_in_sentences(f, sentences) for f in place.facts),
                 other_places(text, sentences, place, pois, names), not refusal_problems(text, names),
                 len(text.split()), text)


def ask(url: str, body: dict) -> dict:
    request = urllib.request.Request(url + "/tour-guide", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


INTEREST_CHOICES = ("own", "other")


def interests_for(poi: POI, choice: str, rng: random.Random) -> list[str]:
    """`own`: the place's first three interests, what it is known for; `other`: two interests it
    is not tagged with, as a visitor with other tastes would pick (the answer must still be about it)."""
    if choice == "own":
        return list(poi.interests)[:3]
    if choice != "other":
        raise ValueError(f"unknown interests choice {choice!r}; choose from {', '.join(INTEREST_CHOICES)}")
    return rng.sample([i for i in INTERESTS if i not in poi.interests], 2)


def measure(url: str, styles: tuple[str, ...], offset_m: float = 0.0, limit: int | None = None, seed: int = 0,
            pois_path: str | Path = SYDNEY, progress: bool = False, interests: str = "own", workers: int = 1) -> dict:
    """Every known place (or the first `limit`) in every style, asked with `interests` (see
    interests_for); the rates and each check. `workers` requests are in flight at once (the
    server's contexts): each answer is greedy on a context of its own, so the answers are those of
    one at a time."""
    pois = {p.id: p for p in load_pois(pois_path)}
    names = PlaceNames(pois.values())
    known = json.loads(urllib.request.urlopen(url + "/coverage").read())["places"][:limit]
    rng = random.Random(seed)
    asks = []  # drawn in order first, so the seeded pins and interests do not depend on `workers`
    for place in known:
        poi = pois[place["poi_id"]]
        lat, lon = moved(poi.latitude, poi.longitude, offset_m, rng.uniform(0, 360)) if offset_m else \
            (poi.latitude, poi.longitude)
        asks += [(poi, style, {"latitude": lat, "longitude": lon, "interests": interests_for(poi, interests, rng),
                               "style": style}) for style in styles]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        answers = tqdm(pool.map(lambda a: ask(url, a[2]), asks), total=len(asks), desc="facts", unit="answer",
                       disable=not progress)
        checks = [check(answer, poi, pois, names, style) for (poi, style, _), answer in zip(asks, answers)]
    return {"offset_m": offset_m, "places": len(known), "styles": list(styles), "interests": interests, **rates(checks),
            "checks": [c.record() for c in checks]}


def rates(checks: list[Check]) -> dict:
    """The shares over all checks, and per style when there are several."""
    styles = sorted({c.style for c in checks})
    by_style = {s: _shares([c for c in checks if c.style == s]) for s in styles} if len(styles) > 1 else None
    return {**_shares(checks), **({"by_style": by_style} if by_style else {})}


def _shares(checks: list[Check]) -> dict:
    n = max(1, len(checks))
    return {"answers": len(checks), "answered_beside": sum(c.beside for c in checks) / n,
            "names_place": sum(c.names for c in checks) / n, "own_fact": sum(c.own_fact for c in checks) / n,
            "other_fact": sum(bool(c.other_facts) for c in checks) / n, "refused": sum(c.refused for c in checks) / n,
            "mean_words": sum(c.words for c in checks) / n}


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"  # '-': a report from before the column


def _what_missed(check: dict) -> str:
    said = []
    if check.get("refused"):
        said.append("refuses")
    if not check["names"]:
        said.append("does not name it")
    if not check["own_fact"]:
        said.append("states none of its facts")
    if check["other_facts"]:
        said.append(f"speaks of {', '.join(check['other_facts'])}")
    return "; ".join(said)


def render(result: dict) -> list[str]:
    """The Markdown section of docs/results/app.md."""
    where = f"pins {result['offset_m']:.0f} m from each place, in a seeded direction" if result["offset_m"] \
        else "pins on each place"
    asked = ("two interests the place is not tagged with" if result.get("interests") == "other"
             else "the place's own interests")
    lines = [f"## Right facts, right place ({result['places']} known places x {len(result['styles'])} styles, {where})",
             "", f"Asked with {asked}.", "", "| style | answers | answered for the place | names it | states a fact of it | states another "
             "place's | refuses | words |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = list(result.get("by_style", {}).items()) + [("all", result)]
    for style, r in rows:
        lines.append(f"| {style} | {r['answers']} | {r['answered_beside']:.1%} | {r['names_place']:.1%} | "
                     f"{r['own_fact']:.1%} | {r['other_fact']:.1%} | {_share(r.get('refused'))} | {r['mean_words']:.0f} |")
    misses = [c for c in result["checks"] if "text" in c]
    shown = "the first 8 of them" if len(misses) > 8 else "each"
    lines += ["", "Goals: names it 100%, states a fact of it >= 95%, states another place's 0%. The model's text "
              f"is scored, not the app's lead line. {len(misses)} answer(s) miss; {shown} below, every one in the "
              "JSON.", ""]
    lines += [f"- `{c['poi_id']}` ({c['style']}): {_what_missed(c)}. \"{c['text']}\"" for c in misses[:8]]
    lines += [""] if misses else []
    return lines


# --- unknown pins: the model alone says it knows nothing ----------------------------------------

@dataclass(frozen=True)
class UnknownCheck:
    plus_code: str
    location: str  # as the prompt gives it: '2M6R+6G Wollongong'
    style: str
    abroad: bool
    nearest_m: float | None  # to the nearest known place
    in_known_block: bool  # its Plus Code block (a short code's first pair) holds a known place
    problems: tuple[str, ...]  # data.refusal.refusal_problems; none: refused
    words: int
    text: str

    @property
    def refused(self) -> bool:
        return not self.problems

    @property
    def names_known(self) -> bool:
        return any(p.startswith("wrong place") for p in self.problems)

    def record(self) -> dict:
        row = asdict(self)
        return {k: v for k, v in row.items() if k != "text"} if self.refused else row


def unknown_pins(pois: list[POI], count: int, seed: int = 0, corpus: SamplingConfig = SHIP_SAMPLING,
                 gazetteer: Gazetteer | None = None) -> list[Place]:
    """`count` pins with no POI within 500 m (data.sampling.unknown_cells on a stream of the bench's
    own), each in a cell that `corpus`'s hash (the ship corpus: seed 0, 10% test) puts in test:
    whichever unknown cells a corpus drew, it never trained on these."""
    if corpus.test_fraction <= 0:
        raise ValueError("the corpus holds out no test cells, so no unknown pin is sure to be untrained")
    stream = unknown_cells(pois, f"bench:{seed}", gazetteer)
    return list(itertools.islice((p for p in stream if split_of(p.plus_code, corpus) == "test"), count))


def unknown_requests(pins: list[Place], seed: int = 0) -> list[TourRequest]:
    """Each pin asked once: the styles in turn, 1-3 seeded interests."""
    rng = random.Random(f"{seed}:unknown")
    return [TourRequest(pin, tuple(rng.sample(INTERESTS, rng.randint(1, 3))), list(STYLES)[k % len(STYLES)])
            for k, pin in enumerate(pins)]


def abroad(header: dict) -> bool:
    """Whether a planned pin lies near a city abroad rather than in the known places' region."""
    nearest = header["nearest"]
    return nearest is not None and nearest["distance_m"] > ABROAD_M


def measure_unknown(guide: TourGuide, pins: list[Place], names: PlaceNames, seed: int = 0,
                    progress: bool = False) -> dict:
    """Each pin, the styles in turn and 1-3 seeded interests, planned as the app plans it and
    answered by the model alone; the refusal rates and each check."""
    known_blocks = {block_of(p.latitude, p.longitude) for p in (guide.coverage.places if guide.coverage else [])}
    checks = []
    for request in tqdm(unknown_requests(pins, seed), desc="unknown pins", unit="answer", disable=not progress):
        pin = request.place
        plan = guide.plan(request)
        if plan.header["nearby"]:
            raise ValueError(f"{pin.plus_code} has a known place within 500 m: not an unknown pin for this model")
        text = guide.backend.complete(plan.query, guide.options).text
        nearest = plan.header["nearest"]
        nearest_m = nearest["distance_m"] if nearest else None
        checks.append(UnknownCheck(pin.plus_code, plan.query.location, request.style,
                                   abroad(plan.header), nearest_m,
                                   block_of(pin.latitude, pin.longitude) in known_blocks,
                                   tuple(refusal_problems(text, names)), count_words(text), text))
    near = [c for c in checks if c.nearest_m is not None and c.nearest_m <= NEAR_MISS_M]
    groups = {"POI region": [c for c in checks if not c.abroad], f"of which within {NEAR_MISS_M / 1000:g} km of a place": near,
              "of which in a Plus Code block that holds a known place": [c for c in checks if c.in_known_block],
              "abroad": [c for c in checks if c.abroad],
              **{s: [c for c in checks if c.style == s] for s in STYLES}}
    return {"pins": len(pins), **_refusals(checks), "by": {g: _refusals(cs) for g, cs in groups.items() if cs},
            "checks": [c.record() for c in checks]}


def check_unknown(model: str, kind: str | None, count: int, seed: int = 0, pois_path: str | Path = SYDNEY,
                  progress: bool = False, coverage_file: str | Path | None = None) -> dict:
    """The unknown-pin check on a model loaded here with the coverage shipped beside it (or
    `coverage_file`, for a model without one, e.g. a run's teacher): the served app is not asked,
    so nothing it adds to an answer counts."""
    coverage = Coverage.load(coverage_file) if coverage_file else TourGuide.coverage_for(model)
    if coverage is None:
        raise ValueError(f"no coverage file beside {model}: without it no pin is known to be far from its places")
    pois = load_pois(pois_path)
    with open_backend(kind, model) as backend:
        return measure_unknown(TourGuide(backend, coverage), unknown_pins(pois, count, seed), PlaceNames(pois),
                               seed, progress)


def _refusals(checks: list[UnknownCheck]) -> dict:
    n = max(1, len(checks))
    return {"answers": len(checks), "refused": sum(c.refused for c in checks) / n,
            "names_known": sum(c.names_known for c in checks) / n, "mean_words": sum(c.words for c in checks) / n}


def render_unknown(result: dict) -> list[str]:
    """The Markdown section of docs/results/app.md on unknown pins."""
    by = result["by"]
    lines = [f"## Unknown pins: the model alone ({result['pins']} pins with no known place within 500 m)", "",
             f"{by.get('POI region', {}).get('answers', 0)} pins in the known places' region (streets, suburbs, "
             f"water) and {by.get('abroad', {}).get('answers', 0)} near cities abroad, seeded; each cell is one "
             "the corpus's hash holds out as test, so never trained. Each is asked the app's query for such a pin "
             "(TourGuide.plan: the pin's own cell, styles in turn, 1-3 random interests) straight through the model, "
             "greedy, with no app notice. A refusal is one sentence of at most 20 words that says it knows nothing, "
             "names no known place and no other proper noun (data.refusal). A Plus Code block is the ~5 km square "
             "a short code's first two characters name.", "",
             "| pins | answers | refusal | names a known place | words |", "|---|---:|---:|---:|---:|"]
    for group, r in [*by.items(), ("all", result)]:
        lines.append(f"| {group} | {r['answers']} | {r['refused']:.1%} | {r['names_known']:.1%} | {r['mean_words']:.0f} |")
    misses = [c for c in result["checks"] if "text" in c]
    lines += ["", f"Goal: refusal >= 95%. {len(misses)} answer(s) are no refusal; "
              f"{'the first 5' if len(misses) > 5 else 'each'} below, every one in the JSON.", ""]
    lines += [f"- `{c['location']}` ({c['style']}): {'; '.join(c['problems'])}. \"{c['text']}\"" for c in misses[:5]]
    return lines + ([""] if misses else [])
