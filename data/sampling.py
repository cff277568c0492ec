"""From POIs to training requests: Plus Code cells, a split by place, and sampling strategies.

A sample is (cell, interests, style). The cell is the 10-digit Plus Code square (~14 m) holding a
POI; POIs that share a square share a cell. Splits are made by cell, so a test POI is never seen
in training, and by a hash of the code, so adding POIs later does not reshuffle the others.
Optionally a share of requests asks about cells with no POI near (`unknown_rate`), split by the
same hash, whose answer is the refusal (data.refusal).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from data.generate.base import GenerationRequest
from data.geo import (
    CODE_DIGITS,
    SHORT_DROP,
    Gazetteer,
    Place,
    block_of,
    cell_centre,
    decode,
    distance_m,
    moved,
    plus_code_for,
    shorten,
)
from data.poi import POI
from data.vocab import INTERESTS, STYLES

STRATEGIES = ("uniform", "interest-balanced", "density")
SPLITS = ("train", "val", "test")
# cells: val and test are places never trained on (to measure what a model does off its map);
# requests: every place in every split, the splits differing in interests and style only (the
# corpus of a model that ships knowing every place).
HOLDOUTS = ("cells", "requests")
_DENSITY_RADIUS_M = 500.0
_RETRIES_PER_SLOT = 30
# A cell is unknown when no POI lies within this of any point of it: app.coverage.AROUND_M, the
# radius within which the app answers for a known place (a test holds the two equal).
UNKNOWN_CLEAR_M = 500.0
_CELL_HALF_DIAGONAL_M = 10.0  # a 10-digit cell is at most 13.9 m a side
_REGION_MARGIN_M = 1000.0  # around the POIs' bounding box, so a one-street dataset still has a region
_WORLD_MIN_POPULATION = 500_000  # the gazetteer's cities that unknown pins abroad are dropped near
_WORLD_SPREAD_M = 5000.0
_UNKNOWN_MAX_MISSES = 10_000
# Near-miss unknown cells lie this far from a random POI (then must still clear every POI): their
# short codes share the leading characters of known ones, which a random point of a city's box
# seldom does, and which is where a model mistakes an unknown cell for a known one.
_NEAR_MIN_M, NEAR_MAX_M = UNKNOWN_CLEAR_M + 20.0, 2000.0
def _ring_misses(pois: list[POI]) -> Callable[[random.Random], tuple[float, float]]:
    def draw(rng: random.Random) -> tuple[float, float]:
        poi = rng.choice(pois)
        return moved(poi.latitude, poi.longitude, rng.uniform(_NEAR_MIN_M, NEAR_MAX_M), rng.uniform(0, 360))
    return draw


def _block_misses(pois: list[POI]) -> Callable[[random.Random], tuple[float, float]]:
    blocks = sorted({block_of(p.latitude, p.longitude) for p in pois})
    inset = 1e-7  # keeps a draw off the next block's edge whatever the float rounding

    def draw(rng: random.Random) -> tuple[float, float]:
        south, west, north, east = rng.choice(blocks)
        return rng.uniform(south + inset, north - inset), rng.uniform(west + inset, east - inset)
    return draw


# The short code's digits an edit may change: its first two pairs. A new digit in the last pair moves
# the cell under 300 m, so never clear of the place it came from.
_EDIT_AT = tuple(range(SHORT_DROP, SHORT_DROP + 4))


def _edit_misses(pois: list[POI]) -> Callable[[random.Random], tuple[float, float]]:
    codes = sorted({plus_code_for(p.latitude, p.longitude) for p in pois})

    def draw(rng: random.Random) -> tuple[float, float]:
        code = rng.choice(codes)
        at = rng.choice(_EDIT_AT)
        digit = rng.choice([d for d in CODE_DIGITS if d != code[at]])
        return cell_centre(code[:at] + digit + code[at + 1:])
    return draw


# How near misses are drawn. `ring`: 0.5-2 km from a random POI, so mostly around the dense centre
# where most POIs stand. `block`: anywhere in a random block that holds a POI, every such block
# alike, whatever its distance to the POIs: a pin in a sparse block shares its short code's first
# pair with a few known places, and those are the pins the near-miss-3 models miss most
# (docs/results/unknown-teacher-nearmiss-5.md). `edit`: a known place's cell with one digit of its
# short code's first two pairs changed, so the short code differs from a known one in one character
# (the pins the models still miss share two or three characters with the place they name instead:
# docs/results/unknown-default.md); unknown_cells drops those that land near a place.
NEAR_MISSES: dict[str, Callable[[list[POI]], Callable[[random.Random], tuple[float, float]]]] = {
    "ring": _ring_misses,
    "block": _block_misses,
    "edit": _edit_misses,
}


def _either(*kinds: str) -> Callable[[list[POI]], Callable[[random.Random], tuple[float, float]]]:
    """Each draw one of `kinds`' alike. Edits keep a known code's last pair, so they never teach the
    pins 0.5-2 km from a place with a last pair of their own, which rings draw: the pins the
    edit-trained models answered most (bench.unknown's "within 2 km of a place": 64.8-75.9%
    refused in docs/results/unknown-600-nearmiss-14*.md; the whole region 84.7-93.0%)."""
    def misses(pois: list[POI]) -> Callable[[random.Random], tuple[float, float]]:
        draws = [NEAR_MISSES[k](pois) for k in kinds]
        return lambda rng: rng.choice(draws)(rng)
    return misses


NEAR_MISSES["ring+edit"] = _either("ring", "edit")


@dataclass(frozen=True)
class Cell:
    plus_code: str
    short_code: str
    locality: str
    pois: tuple[POI, ...]

    @property
    def interests(self) -> tuple[str, ...]:
        return tuple(i for i in INTERESTS if any(i in p.interests for p in self.pois))


@dataclass(frozen=True)
class SamplingConfig:
    strategy: str = "uniform"
    samples_per_cell: float = 12.0  # average; the total per split is this times its cells
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    off_interest_rate: float = 0.2  # how often a request adds an interest the place lacks
    # How often a request names only interests the place lacks: a visitor with other tastes still
    # stands at this place, and a model that never saw such requests drifts to a place that
    # matches them (docs/results/app-other-interests.md).
    untagged_rate: float = 0.0
    max_interests: int = 3
    country: str = "Australia"
    language: str = "English"
    holdout: str = "cells"
    # Share of each split's requests about a cell with no POI within UNKNOWN_CLEAR_M, in the POIs'
    # region and near cities elsewhere; the answer says the guide knows nothing there. 0 draws
    # nothing, so corpora made without it keep their random stream.
    unknown_rate: float = 0.0
    # Share of those unknown cells drawn near a POI (0.5-2 km away) rather than anywhere in the
    # region or abroad: the near misses. 0 keeps the stream of corpora (and bench pins) made without it.
    unknown_near_share: float = 0.0
    # How near misses are drawn, of NEAR_MISSES; keys a corpus only when set, so corpora made
    # before it keep their fingerprints.
    unknown_near: str = field(default="ring", metadata={"keyed_when_set": True})

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {list(STRATEGIES)}")
        if self.holdout not in HOLDOUTS:
            raise ValueError(f"unknown holdout {self.holdout!r}; choose from {list(HOLDOUTS)}")
        if self.samples_per_cell <= 0:
            raise ValueError("samples_per_cell must be positive")
        if not (self.val_fraction >= 0 and self.test_fraction >= 0 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val and test fractions must be >= 0 and leave room for train")
        if not 0 <= self.untagged_rate <= 1:
            raise ValueError("untagged_rate must be between 0 and 1")
        if not 0 <= self.unknown_rate < 1:
            raise ValueError("unknown_rate must be at least 0 and below 1")
        if not 0 <= self.unknown_near_share <= 1:
            raise ValueError("unknown_near_share must be between 0 and 1")
        if self.unknown_near not in NEAR_MISSES:
            raise ValueError(f"unknown unknown_near {self.unknown_near!r}; choose from {list(NEAR_MISSES)}")


def cells_from_pois(pois: list[POI], gazetteer: Gazetteer | None = None) -> list[Cell]:
    """Group POIs by their 10-digit code; order follows the first POI of each cell."""
    groups: dict[str, list[POI]] = defaultdict(list)
    for poi in pois:
        groups[poi.plus_code].append(poi)
    cells = []
    for code, members in groups.items():
        short, locality = shorten(code, gazetteer)
        if short is None:
            raise ValueError(f"no gazetteer locality can shorten {code} ({members[0].name})")
        cells.append(Cell(code, short, locality, tuple(members)))
    return cells


def split_of(plus_code: str, config: SamplingConfig) -> str:
    digest = hashlib.sha256(f"{config.seed}:{plus_code}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


def split_requests(cells: list[Cell], config: SamplingConfig, all_pois: list[POI],
                   gazetteer: Gazetteer | None = None) -> dict[str, list[GenerationRequest]]:
    """The requests of each split. Held out by cell, a split samples `samples_per_cell` for each
    of its cells; held out by request, train does so for every cell and val / test draw their
    fraction of that on the same cells, never repeating a request of an earlier split. Then each
    split's `unknown_rate` of requests about unknown cells."""
    if config.holdout == "cells":
        by_split = split_cells(cells, config)
        out = {s: sample_requests(by_split[s], config, all_pois, salt=s) for s in SPLITS}
    else:
        share = {"train": 1.0, "val": config.val_fraction, "test": config.test_fraction}
        out = {}
        taken: set[tuple] = set()
        for split in SPLITS:
            out[split] = sample_requests(cells, config, all_pois, salt=split,
                                         per_cell=config.samples_per_cell * share[split], exclude=taken)
            taken |= {request_key(r) for r in out[split]}
    if config.unknown_rate:
        unknown = unknown_requests({s: len(out[s]) for s in SPLITS}, config, all_pois, gazetteer)
        out = {s: out[s] + unknown[s] for s in SPLITS}
    return out


def unknown_cells(pois: list[POI], seed: int | str, gazetteer: Gazetteer | None = None,
                  near_share: float = 0.0, near: str = "ring") -> Iterator[Place]:
    """An endless seeded stream of distinct 10-digit cells with no POI within UNKNOWN_CLEAR_M of
    any point of them, as the app encodes a pin there (the cell centre, its short code and
    locality): alternately a random point of the POIs' region (streets, suburbs, bush, water) and
    one within 5 km of a random city of the gazetteer outside that region, with its own locality.
    A `near_share` of the draws are instead near misses, drawn as NEAR_MISSES[near] says."""
    if not pois:
        raise ValueError("unknown cells are placed around the POIs: give at least one")
    gaz = gazetteer or Gazetteer.default()
    south, west = moved(min(p.latitude for p in pois), min(p.longitude for p in pois), _REGION_MARGIN_M, 225)
    north, east = moved(max(p.latitude for p in pois), max(p.longitude for p in pois), _REGION_MARGIN_M, 45)

    def inside(lat: float, lon: float) -> bool:
        return south <= lat <= north and west <= lon <= east

    cities = sorted((c for c in gaz.places if c.population >= _WORLD_MIN_POPULATION and not inside(c.latitude, c.longitude)),
                    key=lambda c: c.geonameid)
    rng = random.Random(f"{seed}:unknown-cells")
    # Its own generator, so that with near_share 0 the other draws are those of a stream without it.
    near_rng = random.Random(f"{seed}:unknown-near")
    near_miss = NEAR_MISSES[near](pois)
    seen: set[str] = set()
    misses = 0
    n = 0
    while True:
        if near_share and near_rng.random() < near_share:
            lat, lon = near_miss(near_rng)
        else:
            if n % 2 == 0 or not cities:
                lat, lon = rng.uniform(south, north), rng.uniform(west, east)
            else:
                city = rng.choice(cities)
                lat, lon = moved(city.latitude, city.longitude, rng.uniform(0, _WORLD_SPREAD_M), rng.uniform(0, 360))
            n += 1
        place = decode(plus_code_for(lat, lon), gazetteer=gaz)
        clear = UNKNOWN_CLEAR_M + _CELL_HALF_DIAGONAL_M
        if place.plus_code in seen or any(
                distance_m(place.latitude, place.longitude, p.latitude, p.longitude) <= clear for p in pois):
            misses += 1
            if misses > _UNKNOWN_MAX_MISSES:
                raise ValueError(f"no cell {UNKNOWN_CLEAR_M:.0f} m clear of every POI in {misses} tries")
            continue
        misses = 0
        seen.add(place.plus_code)
        yield place


def unknown_requests(counts: dict[str, int], config: SamplingConfig, pois: list[POI],
                     gazetteer: Gazetteer | None = None) -> dict[str, list[GenerationRequest]]:
    """Requests about unknown cells (no POI, so the writer refuses), `unknown_rate` of each split
    once added to its `counts` known requests. A cell's split is its hash's, as for places: a test
    cell is never trained on. One request per cell, random interests, the styles in turn."""
    want = {s: round(counts[s] * config.unknown_rate / (1 - config.unknown_rate)) for s in SPLITS}
    out: dict[str, list[GenerationRequest]] = {s: [] for s in SPLITS}
    rng = random.Random(f"{config.seed}:unknown-requests")
    cells = unknown_cells(pois, config.seed, gazetteer, near_share=config.unknown_near_share,
                          near=config.unknown_near)
    styles = list(STYLES)
    while any(len(out[s]) < want[s] for s in SPLITS):
        place = next(cells)
        split = split_of(place.plus_code, config)
        if len(out[split]) >= want[split]:
            continue
        picked = set(rng.sample(INTERESTS, rng.randint(1, config.max_interests)))
        out[split].append(GenerationRequest(
            plus_code=place.plus_code, short_code=place.short_code, locality=place.locality, pois=(),
            interests=tuple(i for i in INTERESTS if i in picked), style=styles[len(out[split]) % len(styles)],
            country=config.country, language=config.language, seed=rng.randrange(2**31)))
    return out


def request_key(request: GenerationRequest) -> tuple:
    return request.plus_code, tuple(request.interests), request.style


def split_cells(cells: list[Cell], config: SamplingConfig) -> dict[str, list[Cell]]:
    out: dict[str, list[Cell]] = {s: [] for s in SPLITS}
    for cell in cells:
        out[split_of(cell.plus_code, config)].append(cell)
    return out


def _distance_m(a: POI, b: POI) -> float:
    return distance_m(a.latitude, a.longitude, b.latitude, b.longitude)


def density_weights(cells: list[Cell], all_pois: list[POI]) -> list[float]:
    """POIs within 500 m of each cell's main POI (itself included): busy areas get more samples."""
    return [
        float(sum(_distance_m(c.pois[0], p) <= _DENSITY_RADIUS_M for p in all_pois)) for c in cells
    ]


def _interests_for(cell: Cell, rng: random.Random, config: SamplingConfig, first: str | None = None):
    own = list(cell.interests)
    untagged = [i for i in INTERESTS if i not in own]
    # Drawn only when asked for, so corpora made without it keep their random stream.
    if config.untagged_rate and not first and untagged and rng.random() < config.untagged_rate:
        picked = set(rng.sample(untagged, min(len(untagged), rng.randint(1, 2), config.max_interests)))
        return tuple(i for i in INTERESTS if i in picked)
    k = rng.randint(1, min(config.max_interests, max(1, len(own))))
    chosen = set(rng.sample(own, k))
    if first:
        chosen.add(first)
    if rng.random() < config.off_interest_rate:
        chosen.add(rng.choice(INTERESTS))
    while len(chosen) > config.max_interests:
        chosen.discard(rng.choice(sorted(chosen - {first})))
    return tuple(i for i in INTERESTS if i in chosen)


def sample_requests(
    cells: list[Cell], config: SamplingConfig, all_pois: list[POI] | None = None, salt: str = "",
    per_cell: float | None = None, exclude: set[tuple] | frozenset = frozenset(),
) -> list[GenerationRequest]:
    """Distinct (cell, interests, style) requests for one split, none of them in `exclude`,
    reproducible from the seed; `per_cell` (default samples_per_cell) on average for each cell."""
    per_cell = config.samples_per_cell if per_cell is None else per_cell
    if not cells or per_cell <= 0:
        return []
    rng = random.Random(f"{config.seed}:{config.strategy}:{salt}")
    total = max(1, round(per_cell * len(cells)))
    styles = list(STYLES)
    # Quadratic in the POI count, so only the strategy that uses it pays for it.
    weights = (
        density_weights(cells, all_pois or [p for c in cells for p in c.pois])
        if config.strategy == "density"
        else None
    )
    by_interest = {i: [c for c in cells if i in c.interests] for i in INTERESTS}
    balanced = [i for i in INTERESTS if by_interest[i]]

    seen: set[tuple] = set()
    requests: list[GenerationRequest] = []
    for slot in range(total):
        # A slot retries until it finds a request not seen yet. A cell with few interests has few
        # distinct requests, so after the bound a slot stays empty rather than repeat one.
        for attempt in range(_RETRIES_PER_SLOT):
            first = None
            if config.strategy == "uniform":
                # Slots walk the cells in order, so every cell gets the same count; each pass
                # shifts the style by one, so every cell sees every style.
                cell = cells[slot % len(cells)]
                style = styles[(slot // len(cells) + slot + attempt) % len(styles)]
            elif config.strategy == "interest-balanced":
                first = balanced[slot % len(balanced)]
                cell, style = rng.choice(by_interest[first]), rng.choice(styles)
            else:
                cell, style = rng.choices(cells, weights=weights)[0], rng.choice(styles)
            interests = _interests_for(cell, rng, config, first)
            key = (cell.plus_code, interests, style)
            if key not in seen and key not in exclude:
                break
        else:
            continue
        seen.add(key)
        requests.append(
            GenerationRequest(
                plus_code=cell.plus_code,
                short_code=cell.short_code,
                locality=cell.locality,
                pois=cell.pois,
                interests=interests,
                style=style,
                country=config.country,
                language=config.language,
                seed=rng.randrange(2**31),
            )
        )
    return requests
