"""transformers in this process, on the CPU or a GPU: the reference every export is checked against.

Decoding is a plain loop over the model with its KV cache rather than `generate()`, so each token
is yielded the moment it exists and greedy decoding is exactly an argmax per step (what
`models.generate.generate_batch` does for one unpadded prompt).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch

from data.prompt import render_prompt
from models.backends.base import Backend, BackendError, GenerationOptions, Messages, Pieces, TextAssembler
from models.load import LoadOptions, ModelLoadError, input_device, load_model


def sample_next(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> int:
    """One token id from a 1-D logit vector: argmax, or nucleus sampling at a temperature."""
    if options.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= options.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class TorchBackend(Backend):
    kind = "torch"

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto"):
        super().__init__(model)
        try:
            self.net, self.tokenizer = load_model(model, LoadOptions(dtype=dtype, device=device))
        except ModelLoadError as exc:
            raise BackendError(str(exc)) from exc
        self.device = input_device(self.net)
        self.eos = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}
        self._cuda = self.device.type == "cuda"
        # One request at a time per model: the KV cache and the CUDA memory counter are per call,
        # and two decodes at once would only share the same cores.
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {**super().describe(), "device": str(self.device), "dtype": str(self.net.dtype).removeprefix("torch.")}

    def reset_accelerator_peak(self) -> None:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def accelerator_peak(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device)) if self._cuda else None

    def _token_bytes(self, token: int) -> bytes:
        # Byte-level BPE: each token is a run of bytes; decoding one id alone may end mid-character,
        # which the assembler handles.
        piece = self.tokenizer.convert_ids_to_tokens(token)
        decoder = getattr(self.tokenizer, "byte_decoder", None) or _BYTE_DECODER
        try:
            return bytes(decoder[ch] for ch in piece)
        except KeyError:  # a special or added token stored as plain text
            return self.tokenizer.decode([token]).encode()

    def _prompt_ids(self, messages: Messages) -> torch.Tensor:
        prompt = render_prompt(messages, self.tokenizer)
        return self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)

    @torch.inference_mode()
    def _generate(self, messages: Messages, options: GenerationOptions, state: Pieces) -> Iterator[str]:
        ids = self._prompt_ids(messages)
        state.prompt_tokens = int(ids.shape[1])
        generator = None
        if not options.greedy:
            generator = torch.Generator().manual_seed(options.seed)
        text = TextAssembler(self._token_bytes)
        state.completion_tokens = 0
        with self._lock:
            out = self.net(input_ids=ids, use_cache=True)
            for _ in range(options.max_tokens):
                token = sample_next(out.logits[0, -1], options, generator)
                if token in self.eos:
                    state.ended = True
                    break
                state.completion_tokens += 1
                yield text.push(token)
                step = torch.tensor([[token]], device=self.device)
                out = self.net(input_ids=step, cache=out.cache, use_cache=True)
        tail = text.flush()
        if tail:
            yield tail


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for raw bytes, inverted (what byte-level BPE tokens are spelled in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


_BYTE_DECODER = _byte_decoder()
