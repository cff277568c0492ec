"""Turn POI sources that users bring into our POI records.

- `load_csv`: any CSV with a name, a latitude and a longitude, and either `facts` (separated by
  `|`) or a free-text `description` (split into sentences). Optional `id`, `locality`,
  `interests` (separated by `|`, `;` or `,`).
- `load_nyc_lpc`: the NYC Landmarks Preservation Commission individual-landmarks GeoJSON; its
  attribute columns become short factual sentences.
- `load_any`: picks by extension (.jsonl, .csv, .geojson/.json).

Sources rarely carry our interest tags, so those are inferred from the facts' wording
(`data.vocab.interests_in`), with a fallback each loader chooses.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

from data.geo import GeoError, check_coordinates, plus_code_for
from data.poi.schema import MAX_FACTS, POI, POIError, load_pois, slugify
from data.vocab import INTERESTS, interests_in, split_sentences

_COLUMN_ALIASES = {
    "name": ("name", "title", "poi", "place"),
    "latitude": ("latitude", "lat", "y"),
    "longitude": ("longitude", "lon", "lng", "long", "x"),
    "facts": ("facts",),
    "description": ("description", "desc", "text", "summary"),
    "id": ("id",),
    "locality": ("locality", "suburb", "neighbourhood", "neighborhood", "city"),
    "interests": ("interests", "tags", "categories"),
}


def _interests(facts: list[str], given: str | None, fallback: tuple[str, ...]) -> tuple[str, ...]:
    if given and given.strip():
        tags = [t.strip().lower() for t in re.split(r"[|;,]", given) if t.strip()]
        bad = [t for t in tags if t not in INTERESTS]
        if bad:
            raise POIError(f"unknown interest(s) {bad}; choose from {list(INTERESTS)}")
        return tuple(i for i in INTERESTS if i in tags)
    found = interests_in(" ".join(facts))
    return found or fallback


def _make_unique(pois: list[POI]) -> list[POI]:
    """Number repeated ids ('-2') and names (' #2') in file order, so every record stays
    addressable and a text naming one is never read as naming its twin."""
    ids: Counter[str] = Counter()
    names: Counter[str] = Counter()
    out = []
    for poi in pois:
        ids[poi.id] += 1
        names[poi.name] += 1
        changes = {}
        if ids[poi.id] > 1:
            changes["id"] = f"{poi.id}-{ids[poi.id]}"
        if names[poi.name] > 1:
            changes["name"] = f"{poi.name} #{names[poi.name]}"
        out.append(POI(**{**poi.__dict__, **changes}) if changes else poi)
    return out


def load_csv(
    path: str | Path, *, default_locality: str = "", fallback_interests: tuple[str, ...] = ("culture",)
) -> list[POI]:
    """POIs from a generic CSV; raises POIError naming the row and the problem."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = {h.strip().lower(): h for h in reader.fieldnames or []}
        column = {
            key: next((header[a] for a in aliases if a in header), None)
            for key, aliases in _COLUMN_ALIASES.items()
        }
        for required in ("name", "latitude", "longitude"):
            if column[required] is None:
                raise POIError(f"{path}: no {required} column (have {sorted(header)})")
        if column["facts"] is None and column["description"] is None:
            raise POIError(f"{path}: needs a 'facts' or a 'description' column")
        pois = []
        for rowno, row in enumerate(reader, 2):
            get = lambda key, row=row: (row.get(column[key]) or "").strip() if column[key] else ""  # noqa: E731
            try:
                lat, lon = check_coordinates(get("latitude"), get("longitude"))
            except GeoError as exc:
                raise POIError(f"{path}:{rowno}: {exc}") from None
            name = get("name")
            if not name:
                raise POIError(f"{path}:{rowno}: empty name")
            facts = [f.strip() for f in get("facts").split("|") if f.strip()] if get("facts") else []
            facts = facts or split_sentences(get("description"))
            if not facts:
                raise POIError(f"{path}:{rowno}: {name!r} has no facts or description")
            try:
                interests = _interests(facts, get("interests"), fallback_interests)
            except POIError as exc:
                raise POIError(f"{path}:{rowno}: {exc}") from None
            pois.append(
                POI(
                    id=slugify(get("id") or name) or f"row-{rowno}",
                    name=name,
                    latitude=lat,
                    longitude=lon,
                    plus_code=plus_code_for(lat, lon),
                    locality=get("locality") or default_locality,
                    interests=interests,
                    facts=tuple(facts[:MAX_FACTS]),
                )
            )
    return _make_unique(pois)


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == 0


def _nyc_facts(p: dict) -> list[str]:
    name, hood = p["LPC_NAME"].strip(), (p.get("NEIGHBORHO") or "").strip()
    address = (p.get("Address") or "").strip()
    where = f" in {hood}" if hood else ""
    at = f", at {address}" if address else ""
    facts = [f"{name} is a New York City individual landmark{where}{at}."]
    low, high = p.get("Date_Low"), p.get("Date_High")
    if not _blank(low):
        span = f"in {low}" if _blank(high) or high == low else f"between {low} and {high}"
        facts.append(f"It was built {span}.")
    architect = (p.get("Arch_Prima") or "").strip()
    if architect and architect.lower() not in {"unknown", "not determined"}:
        facts.append(f"Its design is credited to {architect}.")
    style = (p.get("Style_Prim") or "").strip()
    if style:
        facts.append(f"Its architectural style is {style}.")
    build_type = (p.get("BuildType") or "").strip()
    if build_type:
        article = "an" if build_type[0].lower() in "aeiou" else "a"
        facts.append(f"The landmark is {article} {build_type.lower()}.")
    # "single family" would tag a house as a family outing; say what it means instead.
    use = re.sub(r"(single|multi) famil?y", r"\1 household", (p.get("USE_ORIG") or "").strip())
    if use:
        # Values read "Religious, church, Episcopal": the last term is the most specific.
        facts.append(f"Its original use was {use.split(',')[-1].strip().lower()} ({use.split(',')[0].strip().lower()}).")
    return facts


def _nyc_interests(facts: list[str]) -> tuple[str, ...]:
    # Every LPC landmark is a historic building; the other facts may add culture, art, etc.
    # The first fact is skipped: its neighbourhood names ("Kips Bay") would read as beaches.
    cued = set(interests_in(" ".join(facts[1:])))
    return tuple(i for i in INTERESTS if i in {"architecture", "history"} | cued)


def load_nyc_lpc(path: str | Path) -> list[POI]:
    """POIs from the NYC LPC individual-landmarks GeoJSON (point features)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("type") != "FeatureCollection":
        raise POIError(f"{path}: not a GeoJSON FeatureCollection")
    rows = []
    for k, feature in enumerate(data["features"]):
        props, geom = feature.get("properties") or {}, feature.get("geometry") or {}
        if geom.get("type") != "Point" or not (props.get("LPC_NAME") or "").strip():
            raise POIError(f"{path}: feature {k} is not a named point")
        lon, lat = geom["coordinates"][:2]
        try:
            lat, lon = check_coordinates(lat, lon)
        except GeoError as exc:
            raise POIError(f"{path}: feature {k} ({props['LPC_NAME']}): {exc}") from None
        rows.append((props, lat, lon))
    # Thirty names repeat (e.g. two "Dollar Savings Bank"s); the address tells them apart, and
    # the LP number where the address repeats too. A few features are one landmark on two lots
    # (same name and LP number): _make_unique numbers those.
    counts = Counter(p["LPC_NAME"].strip() for p, _, _ in rows)
    with_address = Counter(
        f"{p['LPC_NAME'].strip()} ({(p.get('Address') or '').strip()})" for p, _, _ in rows
    )
    pois = []
    for props, lat, lon in rows:
        name = props["LPC_NAME"].strip()
        lp = (props.get("LP_NumTrim") or props.get("LPC_LPNumb") or "").strip()
        if counts[name] > 1:
            address = (props.get("Address") or "").strip()
            qualified = f"{name} ({address})"
            name = qualified if address and with_address[qualified] == 1 else f"{name} ({lp})"
        facts = _nyc_facts(props)
        pois.append(
            POI(
                id=slugify(f"nyc-{lp}" if lp else f"nyc-{name}"),
                name=name,
                latitude=lat,
                longitude=lon,
                plus_code=plus_code_for(lat, lon),
                locality=(props.get("NEIGHBORHO") or "").strip() or "New York City",
                interests=_nyc_interests(facts),
                facts=tuple(facts[:MAX_FACTS]),
                extra={"source": "nyc-lpc", "lp_number": lp},
            )
        )
    return _make_unique(pois)


def load_any(path: str | Path) -> list[POI]:
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return load_pois(path)
    if suffix == ".csv":
        return load_csv(path)
    if suffix in (".geojson", ".json"):
        return load_nyc_lpc(path)
    raise POIError(f"{path}: unknown POI file type {suffix!r} (use .jsonl, .csv or .geojson)")
