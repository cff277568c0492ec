"""Which tokens of a reference answer state a fact of its place, and which are the template
around them.

A tour answer is mostly template ("... is a place to linger; ask about ..."): every place shares
those tokens, and a student that only keeps them looks good on a plain per-token average while it
has forgotten every place. The tokens that carry the knowledge compression must keep are the
facts'. A word of the answer is a fact word when it is a content word (a number, or a word of four
letters or more, data.validate's rule) of one of its place's facts that the answer states; the
tokens of fact words are fact tokens. The healing curve scores them apart (compress.heal_curve)
and the guided search can weight them (compress.guided).
"""

from __future__ import annotations

import re

import torch

from compress.calibration import ForcedSequence
from data.poi import POI
from data.prompt import IM_END
from data.validate import fact_present

_WORD = re.compile(r"[A-Za-z0-9]+")  # data.validate's words, before it lowercases them


def fact_spans(text: str, facts: list[str]) -> list[tuple[int, int]]:
    """Character spans of the fact words of `text`: the content words of the `facts` it states."""
    stated = " ".join(f for f in facts if fact_present(f, text))
    # A one-word "fact" is present exactly when the word is a content word of `stated`.
    return [m.span() for m in _WORD.finditer(text) if stated and fact_present(m.group(), stated)]


def fact_mask(row: dict, seq: ForcedSequence, tokenizer, pois: dict[str, POI]) -> torch.Tensor:
    """One flag per answer token of `seq` (the encoding of `row`): whether it is a fact token."""
    facts = [f for i in row["poi_ids"] if i in pois for f in pois[i].facts]
    encoded = tokenizer(row["target"] + IM_END, add_special_tokens=False, return_offsets_mapping=True)
    answer = seq.ids[seq.answer_start:]
    if encoded["input_ids"][:len(answer)] != answer:
        raise ValueError(f"the answer at {row.get('plus_code')} tokenizes differently from its training encoding")
    spans = fact_spans(row["target"], facts)
    flags = [any(start < e and s < end for s, e in spans) for start, end in encoded["offset_mapping"][:len(answer)]]
    return torch.tensor(flags, dtype=torch.bool)


def fact_masks(rows: list[dict], sequences: list[ForcedSequence], tokenizer, pois: dict[str, POI]) -> list[torch.Tensor]:
    return [fact_mask(r, s, tokenizer, pois) for r, s in zip(rows, sequences)]
