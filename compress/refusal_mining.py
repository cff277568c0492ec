"""Hard rows for the refusal decision: a corpus for a short second pass on what the student decides
wrong at the first answer token.

    python -m compress.refusal_mining --model runs/smollm2-nearmiss-14/restart \
        --data runs/smollm2-nearmiss-14/data --out runs/smollm2-nearmiss-14/mined

A guide trained to refuse most unknown cells also refuses a few known places outright, in all their
styles (near-miss-14: 11 of 252, mostly places with several edit near misses of their own code): it
has not learnt their codes well enough to tell them from the one-digit edits around them. The known
places are a closed set, since the guide ships knowing every one, so the rows it gets wrong there
can be trained on directly. This scores the first answer token of every training row with
compress.refusal_prior's margin (> 0: greedy decoding starts a refusal). The mined corpus's train
split holds every row decided wrong, or right by less than `band`, `repeat` times, plus a `keep`
share of the other rows once, so the pass still sees every kind of row and the refusal prior stays
about where the first pass put it. Val and test are copied unchanged: the fine-tune validates as
before and compress.refusal_prior's val prompts stay unseen.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from compress.refusal_prior import first_positions, refusal_starts
from core.artifacts import atomic_dir, write_json
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from data.corpus import read_split, write_split
from data.sampling import SPLITS
from models.load import LoadOptions, ModelLoadError, load_model

MINING_FILE = "mining.json"


@dataclass(frozen=True)
class MiningConfig:
    """Which training rows a refusal-mining pass repeats, and how much of the rest it keeps."""

    band: float = field(default=2.0, metadata={
        "help": "a row is hard when its first-token margin is wrong or right by less than this (logits)"})
    repeat: int = field(default=3, metadata={"help": "times each hard row appears in the mined train split"})
    keep: float = field(default=0.25, metadata={"help": "share of the other training rows kept, once each"})
    seed: int = field(default=0, metadata={"help": "seeds which of the other rows are kept"})

    def __post_init__(self) -> None:
        if self.band < 0:
            raise ValueError("band must be at least 0")
        if self.repeat < 1:
            raise ValueError("repeat must be at least 1")
        if not 0 <= self.keep <= 1:
            raise ValueError("keep must be between 0 and 1")


def is_wrong(row: dict, margin: float) -> bool:
    """Greedy decoding refuses a known place (margin > 0) or describes an unknown cell (margin <= 0)."""
    return margin > 0 if row["poi_ids"] else margin <= 0


def is_hard(row: dict, margin: float, band: float) -> bool:
    """Decided wrong, or right by less than `band`."""
    return is_wrong(row, margin) or abs(margin) < band


def select(rows: list[dict], margins: list[float], config: MiningConfig) -> tuple[list[dict], dict]:
    """(the mined train rows, what was found): hard rows `repeat` times, a `keep` share of the rest."""
    if len(rows) != len(margins):
        raise ValueError(f"{len(rows)} rows but {len(margins)} margins")
    rng = random.Random(f"mining:{config.seed}")
    hard = [is_hard(r, m, config.band) for r, m in zip(rows, margins)]
    wrong = [is_wrong(r, m) for r, m in zip(rows, margins)]
    kept = [r for r, h in zip(rows, hard) if not h and rng.random() < config.keep]
    mined = [r for r, h in zip(rows, hard) if h for _ in range(config.repeat)] + kept
    rng.shuffle(mined)
    summary = {"rows": len(rows), "mined_rows": len(mined), "kept_easy": len(kept)}
    for kind, known in (("known", True), ("unknown", False)):
        of_kind = [i for i, r in enumerate(rows) if bool(r["poi_ids"]) == known]
        summary |= {f"{kind}_rows": len(of_kind), f"{kind}_wrong": sum(wrong[i] for i in of_kind),
                    f"{kind}_hard": sum(hard[i] for i in of_kind)}
    places = Counter(p for r, w in zip(rows, wrong) if w for p in r["poi_ids"])
    summary["known_wrong_places"] = dict(places.most_common())
    return mined, summary


def mine(model: Path, corpus: Path, out: Path, config: MiningConfig = MiningConfig(),
         options: LoadOptions = LoadOptions()) -> dict:
    """Score every training row of `corpus` with `model`, write the mined corpus to `out` with
    MINING_FILE; returns that report."""
    net, tokenizer = load_model(str(model), options)
    rows = read_split(corpus, "train")
    margins, _, _ = first_positions(net, tokenizer, [r["messages"] for r in rows], refusal_starts(tokenizer),
                                    "train rows")
    mined, summary = select(rows, margins.tolist(), config)
    report = {"model": str(model), "corpus": str(corpus), "config": vars(config), **summary}
    with atomic_dir(out) as tmp:
        write_split(tmp, "train", mined)
        for split in SPLITS[1:]:
            write_split(tmp, split, read_split(corpus, split))
        write_json(Path(tmp) / MINING_FILE, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m compress.refusal_mining", __doc__.split("\n\n")[1])
    parser.add_argument("--model", required=True, help="the student whose first-token decisions are scored")
    parser.add_argument("--data", required=True, help="the corpus it was trained on (the run's data stage)")
    parser.add_argument("--out", required=True, help="where the mined corpus goes")
    add_config_flags(parser, MiningConfig)

    def action(args):
        report = mine(Path(args.model), Path(args.data), Path(args.out), config_from_args(MiningConfig, args))
        print(f"known rows refused {report['known_wrong']} of {report['known_rows']} "
              f"({len(report['known_wrong_places'])} places), unknown rows answered {report['unknown_wrong']} of "
              f"{report['unknown_rows']}; {report['known_hard'] + report['unknown_hard']} hard rows x{args.repeat} "
              f"+ {report['kept_easy']} others = {report['mined_rows']} rows -> {args.out}")
        return 0
    return run_command(parser, argv, action, (ValueError, OSError, ModelLoadError))


if __name__ == "__main__":
    sys.exit(main())
