"""Byte-level BPE tokenizers for proxy models, built the way Qwen2/Qwen3's is.

Qwen's tokenizer first splits text with a regex (letters, single digits, punctuation runs,
whitespace), then maps bytes to printable characters (ByteLevel) and merges with BPE. Training
ours with the same pre-tokenizer keeps the proxy's token boundaries like the real teacher's, and
lets llama.cpp load the vocabulary with its `qwen2` pre-tokenizer. Real Qwen3 checkpoints keep
their own tokenizer; this is only for models we train from scratch.

    python -m models.tokenizer --data out/corpus --out out/tokenizer --vocab-size 4096
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from core.cli import fail
from data.corpus import read_split
from data.prompt import CHAT_TEMPLATE, END_OF_TEXT, IM_END, IM_START, render_chatml

# Qwen2's split pattern: contractions, letter runs with one leading non-letter, single digits,
# punctuation runs, newlines, and trailing whitespace kept apart from the next word.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)


# How text is split before BPE, by llama.cpp's name for it: Qwen2's regex then bytes (Qwen3), or
# single digits then byte-level with GPT-2's regex (SmolLM2).
SPLITS = ("qwen2", "smollm")


def pre_tokenizer_for(split: str) -> pre_tokenizers.PreTokenizer:
    if split == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2, split: str = "qwen2"):
    """A transformers fast tokenizer with ChatML special tokens and chat template."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} cannot hold the 256 byte symbols and specials")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose {', '.join(SPLITS)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer_for(split)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is in the vocabulary, so no text is ever unknown.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,  # generation stops at the end of the assistant turn, as in Qwen3
        pad_token=END_OF_TEXT,
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def corpus_texts(corpus_dir: str | Path, splits: tuple[str, ...] = ("train",)) -> Iterator[str]:
    """Every prompt and target of a corpus built by `python -m data.build`, as the model sees
    them: rendered through the chat template, so the template's own words get merges too."""
    for split in splits:
        for row in read_split(corpus_dir, split):
            yield render_chatml(row["messages"]) + row["target"] + IM_END


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.tokenizer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="corpus directory with train.jsonl")
    parser.add_argument("--out", required=True, help="directory to save the tokenizer into")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--min-frequency", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        tok = train_tokenizer(corpus_texts(args.data), args.vocab_size, args.min_frequency)
    except (OSError, ValueError, KeyError) as exc:
        return fail(exc)
    tok.save_pretrained(args.out)
    print(json.dumps({"out": str(args.out), "vocab_size": len(tok)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
