"""Reading a corpus that `python -m data.build` wrote: one JSONL file per split."""

from __future__ import annotations

import json
from pathlib import Path

from core.artifacts import write_atomic


def read_split(corpus_dir: str | Path, split: str) -> list[dict]:
    """The rows of one split of a corpus written by `data.build`."""
    path = Path(corpus_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build a corpus with `python -m data.build`")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_split(corpus_dir: str | Path, split: str, rows: list[dict]) -> None:
    """Write one split's rows as `read_split` reads them (atomically: a reader never sees half)."""
    write_atomic(Path(corpus_dir) / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


GENERAL_PROMPTS = Path(__file__).with_name("general_prompts.txt")


def general_prompts(path: str | Path = GENERAL_PROMPTS) -> list[list[dict[str, str]]]:
    """Questions unrelated to the tours, as one-turn conversations: what a fine-tuned teacher must
    still answer as its base model did (the KL between them is measured on these)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [[{"role": "user", "content": line.strip()}] for line in lines if line.strip() and not line.startswith("#")]
