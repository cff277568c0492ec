"""Generation with a transformers model in this process: the teacher answering corpus prompts
for capture, and the proxy's fact-recall check. Prompts are rendered by `data.prompt` so the
model sees exactly what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data.prompt import render_prompt
from models.load import input_device


@dataclass
class Generation:
    prompt_ids: list[int]
    output_ids: list[int]  # without the end-of-turn token
    text: str


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Generation]:
    """Answers to several conversations at once (left-padded). Greedy unless temperature > 0."""
    prompts = [render_prompt(messages, tokenizer) for messages in conversations]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    device = input_device(model)
    sampling = temperature > 0
    if sampling:
        torch.manual_seed(seed)
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=None,
        top_k=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id,
    )
    results = []
    stop = {tokenizer.eos_token_id, pad_id}
    for row, ids in enumerate(encoded):
        new = out[row, width:].tolist()
        for k, token in enumerate(new):
            if token in stop:
                new = new[:k]
                break
        results.append(Generation(ids, new, tokenizer.decode(new, skip_special_tokens=True).strip()))
    return results
