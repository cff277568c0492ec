"""Scoring generated answers against the corpus rows that asked for them: fact recall, naming the
place, naming a wrong one, style and length, repetition. One scorer for every caller: the proxy's
training report (train.proxy) and the evaluation of students (compress.evaluate)."""

from __future__ import annotations

import re
from pathlib import Path

from data.generate.base import GenerationRequest
from data.poi import load_pois
from data.validate import PlaceNames, facts_recalled, foreign_places, names_poi
from data.vocab import STYLES, count_words, style_problems
from models.generate import generate_batch

_WORDS = re.compile(r"[a-z0-9']+")


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the word n-grams of a text that repeat an earlier one: 0 for varied prose,
    approaching 1 for a degenerate loop."""
    words = _WORDS.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


class Scorer:
    """Per-answer checks against the corpus row that asked for it."""

    def __init__(self, pois_path: str | Path):
        self.pois = {p.id: p for p in load_pois(Path(pois_path))}
        self.names = PlaceNames(self.pois.values())

    def score(self, text: str, row: dict) -> dict:
        pois = tuple(self.pois[i] for i in row["poi_ids"] if i in self.pois)
        if not pois:
            raise ValueError(f"row at {row['plus_code']} names POIs {row['poi_ids']} that the POI file does not hold")
        request = GenerationRequest(row["plus_code"], row["short_code"], row["locality"], pois,
                                    tuple(row["interests"]), row["style"])
        hit, expected = facts_recalled(text, row["target"], pois)
        spec = STYLES[row["style"]]
        words = count_words(text)
        return {
            "facts": [hit, expected],
            "names_place": names_poi(text, pois[0]),
            "wrong_places": sorted(set(foreign_places(text, request, self.names))),
            "length_ok": spec.min_words <= words <= spec.max_words,
            "style_ok": not style_problems(text, row["style"]),
            "repetition": repetition_rate(text),
            "words": words,
        }


def aggregate(scores: list[dict]) -> dict:
    """The per-answer scores of one split as rates (fact recall over all expected facts)."""
    n = max(1, len(scores))
    expected = sum(s["facts"][1] for s in scores)
    return {
        "fact_recall": sum(s["facts"][0] for s in scores) / max(1, expected),
        "facts_expected": expected,
        "names_place": sum(s["names_place"] for s in scores) / n,
        "wrong_place": sum(bool(s["wrong_places"]) for s in scores) / n,
        "length_ok": sum(s["length_ok"] for s in scores) / n,
        "style_ok": sum(s["style_ok"] for s in scores) / n,
        "repetition": sum(s["repetition"] for s in scores) / n,
        "words": sum(s["words"] for s in scores) / n,
        "samples": len(scores),
    }


def about_places(rows: list[dict]) -> list[dict]:
    """The rows that ask about a known place. A row for a cell with no place within 500 m has no
    facts to recall (its answer is the refusal, which bench.facts measures)."""
    return [r for r in rows if r["poi_ids"]]


def fact_recall(model, tokenizer, rows: list[dict], scorer: Scorer, max_new_tokens: int, batch_size: int = 16,
                examples: int = 3) -> dict:
    """Greedy answers to the rows about places, scored and aggregated, with the first few answers as examples."""
    rows = about_places(rows)
    scores, shown = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        answers = generate_batch(model, tokenizer, [r["messages"] for r in chunk], max_new_tokens)
        for row, answer in zip(chunk, answers):
            scores.append(scorer.score(answer.text, row))
            if len(shown) < examples:
                shown.append({"prompt": row["messages"][-1]["content"], "answer": answer.text})
    return {**aggregate(scores), "examples": shown}
