"""General ability kept: the KL between a model and the one it came from on questions that have
nothing to do with the tours (data/general_prompts.txt), teacher-forced on the reference model's own
greedy answers. A tour teacher fine-tuned from a pretrained base, and every student of it, is
measured this way against the base."""

from __future__ import annotations

from compress.calibration import encode_rows
from compress.evaluate import forced_metrics
from data.corpus import general_prompts
from models.generate import generate_batch


def general_rows(reference, tokenizer, max_new_tokens: int = 96, batch_size: int = 16) -> list[dict]:
    """Each general prompt with the reference model's greedy answer as its target."""
    prompts = general_prompts()
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        for messages, answer in zip(chunk, generate_batch(reference, tokenizer, chunk, max_new_tokens)):
            rows.append({"messages": messages, "target": answer.text})
    return rows


def general_kl(model, reference, tokenizer, rows: list[dict], batch_size: int = 8, max_length: int = 512) -> dict:
    """KL(reference || model), top-1 agreement and the model's perplexity of the reference's answers."""
    return {**forced_metrics(model, reference, encode_rows(rows, tokenizer, max_length), batch_size),
            "prompts": len(rows)}
