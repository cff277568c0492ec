"""Exact vocabulary trimming: a checkpoint keeps only the tokens its corpus needs.

    python -m compress.vocab --model runs/smollm2-ship/heal/student --data runs/smollm2-ship/data \
        --out out/trimmed

A tour guide's corpus uses a few thousand of SmolLM2's 49,152 tokens, yet the embedding holds a
row for each, and the tied output projection reads all of them for every generated token. What
stays:
- every token the corpus needs: each split's prompt and answer as training tokenizes them
  (train.batches.encode_row: the rendered prompt, then answer + end of turn), and the whole
  conversation as a runtime handed it in one piece would;
- the chat template's own tokens, every special and added token, the config's bos / eos / pad;
- every BPE merge ancestor of a kept token (both halves of each merge that makes it, recursively);
- the 256 byte-level tokens, so any text still tokenizes, through shorter pieces, and decodes to
  itself. SmolLM2's vocabulary lacks 21 of them (six control characters such as \x04, and bytes
  that valid UTF-8 never or almost never holds): its tokenizer drops those characters silently, in
  transformers and in llama.cpp alike. They are added after the kept tokens with embedding rows of
  zeros: their logit is exactly 0 in every runtime, so a greedy step could pick one only where
  every real token's logit is negative (a trained model's best logit is far above 0).
The merge list keeps, in its order, exactly the merges whose two halves and result all stay.

Why it is exact: BPE applies, at each step, the lowest-ranked merge among a word's adjacent pairs.
Every merge on a corpus word's path makes a kept token out of kept tokens, so it is still in the
list; the list is the original's minus some merges, in the same order, so at each step the merge
the original applies is still the lowest-ranked one that applies. Same path, same tokens,
renumbered. The pre-tokenizer, decoder and chat template are not touched.

The kept ids, in ascending order, become ids 0..n-1 (specials and bytes keep their low places);
the embedding's rows (and an untied lm_head's) are taken in that order, and vocab_plan.json
records the table. trim_checkpoint checks the result on every corpus text before writing it.
"""

from __future__ import annotations

import copy
import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import llama_cpp
import torch
from tokenizers import Tokenizer, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

from core.artifacts import atomic_dir, write_json
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from data.corpus import read_split
from data.prompt import IM_END, render_prompt
from data.sampling import SPLITS
from models.backends.torch_runtime import _BYTE_DECODER as BYTE_VALUE  # byte-level char -> its byte: their order
from models.checkpoint import save_model_dir
from models.generate import generate_batch
from models.load import LoadOptions, ModelLoadError, load_model

VOCAB_PLAN_FILE = "vocab_plan.json"  # the kept-id table and the counts (core.artifacts is not ours to edit)
BYTE_TOKENS = tuple(sorted(pre_tokenizers.ByteLevel.alphabet(), key=BYTE_VALUE.get))  # the 256 bytes' stand-ins
# Config fields that hold token ids, in config.json and generation_config.json.
ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id")


class VocabError(ValueError):
    """A tokenizer this trimming cannot keep exact, or a result over its budget; says which."""


@dataclass(frozen=True)
class VocabConfig:
    """Vocabulary trimming: the CLI's flags and the pipeline's [vocab] section."""

    trim: bool = field(default=False, metadata={
        "help": "pipeline only: run the stage (the CLI always trims)"})
    splits: tuple[str, ...] = field(default=SPLITS, metadata={
        "help": "corpus splits whose prompts and answers must tokenize exactly as before", "choices": SPLITS})
    max_tokens: int | None = field(default=None, metadata={
        "help": "refuse a trimmed vocabulary of more tokens than this (a size target, checked)"})

    def __post_init__(self) -> None:
        if not self.splits:
            raise ValueError("splits: name at least one corpus split")
        if self.max_tokens is not None and self.max_tokens < len(BYTE_TOKENS):
            raise ValueError(f"max_tokens {self.max_tokens} cannot even hold the {len(BYTE_TOKENS)} byte tokens")


# ---------------------------------------------------------------- what the corpus needs


def row_texts(row: dict, tokenizer) -> tuple[str, str, str]:
    """The prompt and the answer as train.batches.encode_row tokenizes them (apart), and the
    whole conversation as one text."""
    prompt = render_prompt(row["messages"], tokenizer)
    answer = row["target"] + IM_END
    return prompt, answer, prompt + answer


def template_texts(tokenizer) -> list[str]:
    """The chat template's own words: it rendered around empty messages of every role (a
    template may add a default system prompt when there is none)."""
    system, user, assistant = ({"role": r, "content": ""} for r in ("system", "user", "assistant"))
    return [render_prompt(m, tokenizer) for m in ([user], [system, user], [system, user, assistant])]


def corpus_texts(corpus_dir: str | Path, tokenizer, splits: Iterable[str] = SPLITS) -> list[str]:
    return [text for split in splits for row in read_split(corpus_dir, split) for text in row_texts(row, tokenizer)]


def token_ids(tokenizer, texts: list[str], batch: int = 512) -> list[list[int]]:
    """Each text's ids, specials parsed, nothing added (as encode_row and the runtimes do)."""
    out = []
    for start in range(0, len(texts), batch):
        out += tokenizer(texts[start:start + batch], add_special_tokens=False)["input_ids"]
    return out


def special_ids(tokenizer, model=None) -> set[int]:
    """Every added or special token, and the ids the configs name."""
    ids = set(tokenizer.added_tokens_decoder) | set(tokenizer.all_special_ids)
    for cfg in (model.config, model.generation_config) if model is not None else ():
        for name in ID_FIELDS:
            value = getattr(cfg, name, None)
            ids.update(value if isinstance(value, list) else [] if value is None else [value])
    return ids


# ---------------------------------------------------------------- the plan


@dataclass
class TrimPlan:
    kept: list[int]  # old ids, ascending: new id i is old id kept[i]
    merges: list  # the kept merges, in their original order and spelling
    counts: dict[str, int]
    new_bytes: list[str] = field(default_factory=list)  # byte tokens the old vocabulary lacked: ids after kept's

    @property
    def size(self) -> int:
        return len(self.kept) + len(self.new_bytes)

    @cached_property
    def new_id(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}

    def mapped(self, ids: Iterable[int]) -> list[int]:
        """Old ids as new ones; an id that was dropped raises KeyError."""
        table = self.new_id
        return [table[i] for i in ids]


def _pair(merge) -> tuple[str, str]:
    return tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)


def check_byte_level(spec: dict) -> None:
    """Byte-level BPE only: text becomes bytes before BPE (so a byte token spells any text) and a
    merge's result is its two halves written together."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise VocabError(f"tokenizer model {model.get('type')!r}: trimming keeps byte-level BPE exact, nothing else")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
        raise VocabError("a BPE with subword prefixes, suffixes or dropout is not byte-level BPE")
    if '"ByteLevel"' not in json.dumps(spec.get("pre_tokenizer")):
        raise VocabError("no ByteLevel pre-tokenizer: without byte tokens, dropped tokens could leave text untokenizable")


def plan_trim(spec: dict, needed: set[int]) -> TrimPlan:
    """What stays of tokenizer.json `spec` when the ids `needed` must: those, their merge
    ancestors, the byte tokens and the added tokens; and the merges among what stays."""
    check_byte_level(spec)
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    added = {a["id"] for a in spec.get("added_tokens", [])}
    known = set(vocab.values()) | added
    unknown = sorted(needed - known)
    if unknown:
        raise VocabError(f"ids {unknown[:5]} are neither in the vocabulary nor added tokens")
    token_of = {i: t for t, i in vocab.items()}
    pairs = [_pair(m) for m in model.get("merges", [])]
    makers = defaultdict(list)
    for a, b in pairs:
        makers[a + b].append((a, b))
    wanted = {token_of[i] for i in needed | added if i in token_of}
    present = [t for t in BYTE_TOKENS if t in vocab]
    new_bytes = [t for t in BYTE_TOKENS if t not in vocab]
    keep = wanted | set(present)
    stack = list(keep)
    while stack:  # every merge that makes a kept token: both halves stay too
        for halves in makers.get(stack.pop(), ()):
            fresh = [h for h in halves if h not in keep]
            keep.update(fresh)
            stack += fresh
    kept = sorted({vocab[t] for t in keep} | needed | added)
    merges = [m for m, (a, b) in zip(model.get("merges", []), pairs) if a in keep and b in keep and a + b in keep]
    counts = {"before": len(known), "after": len(kept) + len(new_bytes), "needed": len(needed),
              "ancestors": len(keep - wanted - set(present)), "bytes": len(BYTE_TOKENS), "bytes_new": len(new_bytes),
              "added": len(added), "merges_before": len(pairs), "merges_after": len(merges)}
    return TrimPlan(kept, merges, counts, new_bytes)


def _remap_post_processor(node, new_id: dict[int, int]) -> None:
    """Ids a post-processor writes (TemplateProcessing's special tokens, BERT/RoBERTa's cls and
    sep), renumbered; byte-level BPE's own post-processor has none."""
    if not isinstance(node, dict):
        return
    for token in (node.get("special_tokens") or {}).values():
        token["ids"] = [new_id[i] for i in token["ids"]]
    for key in ("cls", "sep"):
        if isinstance(node.get(key), list):
            node[key][1] = new_id[node[key][1]]
    for inner in node.get("processors") or ():
        _remap_post_processor(inner, new_id)


def trimmed_spec(spec: dict, plan: TrimPlan) -> dict:
    """tokenizer.json with the plan's vocabulary, merges and added-token ids."""
    new_id = plan.new_id
    out = copy.deepcopy(spec)
    model = out["model"]
    vocab = {t: new_id[i] for t, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if i in new_id}
    model["vocab"] = {**vocab, **{t: len(plan.kept) + k for k, t in enumerate(plan.new_bytes)}}
    model["merges"] = copy.deepcopy(plan.merges)
    for token in out.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    _remap_post_processor(out.get("post_processor"), new_id)
    return out


def trimmed_tokenizer(tokenizer, plan: TrimPlan) -> PreTrainedTokenizerFast:
    """A transformers tokenizer over the trimmed tokenizer.json, with the original's special
    tokens, chat template and settings."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    backend = Tokenizer.from_str(json.dumps(trimmed_spec(spec, plan)))
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if k != "additional_special_tokens"}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, **specials, chat_template=tokenizer.chat_template,
        model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side,
        clean_up_tokenization_spaces=getattr(tokenizer, "clean_up_tokenization_spaces", False),
        add_bos_token=getattr(tokenizer, "add_bos_token", False), add_eos_token=getattr(tokenizer, "add_eos_token", False))


# ---------------------------------------------------------------- the model


def _renumbered(value, new_id: dict[int, int]):
    if value is None:
        return None
    return [new_id[v] for v in value] if isinstance(value, list) else new_id[value]


def _rows(weight: torch.Tensor, plan: TrimPlan) -> torch.Tensor:
    kept = weight.detach()[torch.tensor(plan.kept, dtype=torch.long, device=weight.device)]
    return torch.cat([kept, kept.new_zeros((len(plan.new_bytes), *weight.shape[1:]))])


def trim_model(model: nn.Module, plan: TrimPlan) -> None:
    """Keep the plan's rows of the embedding and of an untied lm_head, in the plan's order, then a
    row of zeros per new byte token; renumber the token ids of the config and generation config."""
    embed = model.get_input_embeddings()
    embed.weight = nn.Parameter(_rows(embed.weight, plan))
    size = plan.size
    embed.num_embeddings = size
    head = model.get_output_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if head is not None:
        if tied:
            head.weight = embed.weight
        else:
            head.weight = nn.Parameter(_rows(head.weight, plan))
            if head.bias is not None:
                head.bias = nn.Parameter(_rows(head.bias, plan))
        head.out_features = size
    model.config.vocab_size = size
    new_id = plan.new_id
    for cfg in (model.config, model.generation_config):
        for name in ID_FIELDS:
            if getattr(cfg, name, None) is not None:
                setattr(cfg, name, _renumbered(getattr(cfg, name), new_id))
    if getattr(embed, "padding_idx", None) is not None:
        embed.padding_idx = new_id.get(embed.padding_idx)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight counts once


# ---------------------------------------------------------------- checks

# Texts a trimmed tokenizer must still spell and give back whole: accents, emoji (a ZWJ family, a
# tag-sequence flag), CJK and right-to-left scripts, code, every control character, literal
# special tokens, the last planes of Unicode.
ROUND_TRIP_PROBES = (
    "Café naïve façade — 1,234.5 m² at 46V8+74 Sydney",
    "emoji 🗺️🏛️🍜 👩‍👩‍👧 and a flag 🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "东京塔 서울 Ελληνικά עברית العربية",
    "def f(x):\n\treturn {'k': x ** 2}  # code\r\n",
    "".join(chr(c) for c in range(32)) + "\x7f\u200b\ufeff",
    "<|im_start|>user\nliteral specials<|im_end|>\n",
    "\U00040000 \U0010ffff, a line of spaces         and 0123456789",
)


def round_trip_failures(tokenizer, texts: Iterable[str] = ROUND_TRIP_PROBES) -> list[str]:
    """Texts that transformers does not give back whole from their own tokens."""
    return [t for t in texts if tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"],
                                                 skip_special_tokens=False, clean_up_tokenization_spaces=False) != t]


def llama_cpp_round_trip_failures(gguf_path: str | Path, texts: Iterable[str] = ROUND_TRIP_PROBES) -> list[str]:
    """Texts that llama.cpp, reading the GGUF's vocabulary, does not give back whole."""
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        return [t for t in texts
                if llm.detokenize(llm.tokenize(t.encode("utf-8"), add_bos=False, special=True), special=True)
                != t.encode("utf-8")]
    finally:
        llm.close()



def mismatches(original, trimmed, plan: TrimPlan, texts: list[str]) -> list[str]:
    """Texts the trimmed tokenizer does not tokenize as the original does, renumbered (a text
    whose original tokens include a dropped one counts too)."""
    table = plan.new_id
    wrong = []
    for text, old, new in zip(texts, token_ids(original, texts), token_ids(trimmed, texts)):
        if [table.get(i, -1) for i in old] != new:
            wrong.append(text)
    return wrong


def greedy_agreement(original: tuple, trimmed: tuple, plan: TrimPlan, conversations: list[list[dict]],
                     max_new_tokens: int = 64, batch_size: int = 8) -> dict:
    """Greedy answers of the untrimmed and the trimmed (model, tokenizer) to the same
    conversations. Equal, renumbered, unless the untrimmed model's argmax was a dropped token:
    the trimmed one cannot say it, and must agree up to there. `inconsistent` lists the answers
    that break that rule (none, if the trimming is exact)."""
    table = plan.new_id
    rows = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start:start + batch_size]
        for before, after in zip(generate_batch(*original, chunk, max_new_tokens),
                                 generate_batch(*trimmed, chunk, max_new_tokens)):
            mapped = [table.get(i) for i in before.output_ids]
            dropped = next((k for k, i in enumerate(mapped) if i is None), None)
            rows.append({"equal": after.output_ids == mapped, "dropped_at": dropped,
                         "agrees": after.output_ids[:dropped] == mapped[:dropped] if dropped is not None
                         else after.output_ids == mapped, "before": before.text, "after": after.text})
    return {"answers": len(rows), "equal": sum(r["equal"] for r in rows),
            "dropped_argmax": sum(r["dropped_at"] is not None for r in rows),
            "inconsistent": [r for r in rows if not r["agrees"]], "rows": rows}


# ---------------------------------------------------------------- the whole step


def trim_checkpoint(model_dir: str | Path, corpus_dir: str | Path, out_dir: str | Path,
                    config: VocabConfig = VocabConfig(), load: LoadOptions = LoadOptions()) -> dict:
    """Write `model_dir` trimmed to what the corpus needs into `out_dir` (with vocab_plan.json);
    returns the plan's report. Every corpus text is checked to tokenize exactly as before."""
    model, tokenizer = load_model(str(model_dir), load)
    texts = corpus_texts(corpus_dir, tokenizer, config.splits)
    needed = {i for ids in token_ids(tokenizer, texts + template_texts(tokenizer)) for i in ids}
    plan = plan_trim(json.loads(tokenizer.backend_tokenizer.to_str()), needed | special_ids(tokenizer, model))
    if config.max_tokens is not None and len(plan.kept) > config.max_tokens:
        raise VocabError(f"the corpus needs {len(plan.kept)} tokens (with merge ancestors, bytes and specials), "
                         f"over max_tokens {config.max_tokens}")
    trimmed = trimmed_tokenizer(tokenizer, plan)
    wrong = mismatches(tokenizer, trimmed, plan, texts)
    if wrong:
        raise VocabError(f"{len(wrong)} corpus texts tokenize differently after trimming, e.g. {wrong[0][:120]!r}")
    before = parameters(model)
    trim_model(model, plan)
    report = {"model": str(model_dir), "corpus": str(corpus_dir), "splits": list(config.splits),
              "tokens": plan.counts, "parameters": {"before": before, "after": parameters(model)},
              "texts_checked": len(texts), "kept_ids": plan.kept, "new_bytes": plan.new_bytes}
    with atomic_dir(out_dir) as tmp:  # the folder appears whole or not at all
        save_model_dir(model, trimmed, tmp)
        write_json(tmp / VOCAB_PLAN_FILE, report, indent=None)
    return report


def read_plan(folder: str | Path) -> TrimPlan:
    """The plan a trimmed checkpoint was made with (its vocab_plan.json)."""
    report = json.loads((Path(folder) / VOCAB_PLAN_FILE).read_text())
    return TrimPlan(report["kept_ids"], [], report["tokens"], report["new_bytes"])


def build_parser():
    parser = new_parser("python -m compress.vocab", __doc__.split("\n\n")[0],
                        "python -m compress.vocab --model runs/x/heal/student --data runs/x/data --out out/trimmed")
    parser.add_argument("--model", required=True, help="checkpoint directory (a byte-level BPE tokenizer)")
    parser.add_argument("--data", required=True, help="corpus directory written by python -m data.build")
    parser.add_argument("--out", required=True, help="directory of the trimmed checkpoint")
    add_config_flags(parser, VocabConfig, skip=("trim",))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _trim, (ValueError, FileNotFoundError, ModelLoadError))


def _trim(args) -> int:
    report = trim_checkpoint(args.model, args.data, args.out, config_from_args(VocabConfig, args))
    t, p = report["tokens"], report["parameters"]
    print(f"{t['before']:,} -> {t['after']:,} tokens ({t['needed']:,} the corpus needs, {t['ancestors']:,} merge "
          f"ancestors, {t['bytes']} bytes of which {t['bytes_new']} new, {t['added']} added); merges {t['merges_before']:,} -> "
          f"{t['merges_after']:,}; {p['before'] / 1e6:.2f}M -> {p['after'] / 1e6:.2f}M parameters; "
          f"{report['texts_checked']:,} corpus texts tokenize as before -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
