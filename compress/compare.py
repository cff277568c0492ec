"""Telling two students apart: paired bootstrap intervals over places, and the verdict they allow.

Every model answers the same places, so a difference between two is measured place by place and
the places are resampled together (paired): what varies from place to place cancels, and the
interval is much narrower than two separate ones would suggest. The statistic is a ratio of sums
over places (facts recalled / facts expected, tokens right / tokens), pooled the way the point
values are. The verdict reads the 95% interval, never the point value: ahead or behind only when
the interval excludes zero, otherwise "cannot tell".
"""

from __future__ import annotations

import numpy as np

AHEAD, BEHIND, CANNOT_TELL = "ahead", "behind", "cannot tell"


def ratio(totals: dict[str, tuple[float, float]]) -> float:
    """Sum of numerators over sum of denominators."""
    den = sum(d for _, d in totals.values())
    return sum(n for n, _ in totals.values()) / den if den else float("nan")


def paired_bootstrap(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]], resamples: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> dict:
    """The difference ratio(a) - ratio(b) over the places both hold ({place: (numerator,
    denominator)}), and its percentile bootstrap interval: places drawn with replacement, the
    same draw for both."""
    places = sorted(set(a) & set(b))
    if not places:
        raise ValueError("no place in common to compare on")
    arrays = [np.array([[t[p][0] for p in places], [t[p][1] for p in places]], dtype=np.float64) for t in (a, b)]
    draws = np.random.default_rng(seed).integers(0, len(places), size=(resamples, len(places)))
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = [num[draws].sum(1) / den[draws].sum(1) for num, den in arrays]
        difference = diffs[0] - diffs[1]
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(difference, [tail, 100 - tail]) if np.isfinite(difference).any() else (np.nan,) * 2
    return {"difference": ratio({p: a[p] for p in places}) - ratio({p: b[p] for p in places}),
            "low": float(low), "high": float(high), "places": len(places), "resamples": resamples,
            "confidence": confidence}


def verdict(interval: dict, higher_is_better: bool = True) -> str:
    """'ahead', 'behind' or 'cannot tell' for the first model of `interval`, from its bounds alone."""
    low, high = interval["low"], interval["high"]
    if not higher_is_better:
        low, high = -high, -low
    if low > 0:
        return AHEAD
    if high < 0:
        return BEHIND
    return CANNOT_TELL


def pooled(runs: list[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """Several runs of one model kind (seeds) as one: each place's sums added."""
    out: dict[str, tuple[float, float]] = {}
    for run in runs:
        for place, (num, den) in run.items():
            n0, d0 = out.get(place, (0.0, 0.0))
            out[place] = (n0 + num, d0 + den)
    return out
