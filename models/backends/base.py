"""What every generation backend shares: options, per-request statistics, stop strings, memory.

A backend only has to turn a rendered conversation into a stream of text pieces, one per
generated token; `Backend.stream` wraps that stream with everything the app and the benchmarks
read: time to first token, decode rate, the process's peak memory during the request, stop
strings that may span several pieces, and the finish reason.
"""

from __future__ import annotations

import codecs
import math
import os
import resource
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from data.prompt import TourQuery, build_messages
from models.backends.pool import Lease, Pool

Messages = list[dict[str, str]]


class BackendError(RuntimeError):
    """A backend that cannot load its model or answer (the message says which and why)."""


@dataclass(frozen=True)
class GenerationOptions:
    temperature: float = 0.0  # 0 = greedy: the same answer every time
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    # Wall time an answer may take beside max_tokens (None: no limit): a stalled or slowed machine
    # still gives its slot back.
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 5.0):
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.max_tokens <= 32768:
            raise ValueError(f"max_tokens must be in [1, 32768], got {self.max_tokens}")
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class GenerationStats:
    prompt_tokens: int | None = None  # None: a server that does not report usage while streaming
    completion_tokens: int = 0
    time_to_first_token_s: float | None = None
    total_s: float = 0.0
    # Tokens after the first over the time after the first: the decode rate, without the prompt.
    tokens_per_s: float | None = None
    peak_rss_bytes: int = 0
    peak_accelerator_bytes: int | None = None
    # "stop" (end of turn or a stop string), "length" (max_tokens), "time" (max_seconds) or
    # "cancelled" (the caller's cancel event: a visitor who left)
    finish_reason: str = "length"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Chunk:
    """A piece of the answer; the last chunk of a stream carries the request's stats."""

    text: str
    stats: GenerationStats | None = None


@dataclass
class Answer:
    """A whole generated answer (Backend.complete): the text, its stats and the streamed pieces."""

    text: str
    stats: GenerationStats
    chunks: list[str] = field(default_factory=list)


@dataclass
class Pieces:
    """What a backend's `_generate` fills in while it yields: the prompt's length, and whether
    the model ended its turn (rather than running into max_tokens). `slot` is the pool item the
    request holds (a llama.cpp context), set before `_generate` is called."""

    slot: object = None
    prompt_tokens: int | None = None
    ended: bool = False
    completion_tokens: int | None = None  # when pieces are not one per token (a server's deltas)


def current_rss() -> int:
    """Resident memory of this process now, in bytes (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class MemorySampler:
    """Peak RSS during a request. The kernel's own high-water mark (ru_maxrss) never goes down,
    so after the first big request it would say nothing about later ones; a thread sampling
    /proc every few milliseconds sees the peak of this request alone (a spike shorter than the
    interval can be missed)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak = current_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss())

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())


class TextAssembler:
    """Token ids -> text pieces, holding back bytes of a character that is not complete yet
    (byte-level BPE splits "ø" or an emoji across tokens)."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._token_bytes(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Cuts the text at the first stop string, even one split across pieces: it holds back the
    longest tail that could still become a stop string."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._buffer = ""
        self.stopped = False

    def push(self, text: str) -> str:
        self._buffer += text
        cut = min((i for i in (self._buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._buffer = self._buffer[:cut], ""
            return out
        if self._hold == 0:
            out, self._buffer = self._buffer, ""
            return out
        out, self._buffer = self._buffer[:-self._hold], self._buffer[-self._hold:]
        return out

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out


class Backend(ABC):
    """One loaded model that streams answers. Subclasses implement `_generate`.

    `pool` holds the slots answers run in: one by default (a torch or ONNX model answers one
    request at a time), a llama.cpp backend's contexts. A caller that must know it has a slot
    before it answers anything (a server, to say 503 rather than hang) leases one and passes it
    to `stream`; otherwise `stream` waits for one itself."""

    kind: str = "?"

    def __init__(self, model: str):
        self.model = model
        self.pool: Pool = Pool([None])

    @abstractmethod
    def _generate(self, messages: Messages, options: GenerationOptions, state: Pieces) -> Iterator[str]:
        """Yield the answer's text, one piece per generated token (a piece may be empty while a
        character's bytes are incomplete); set state.prompt_tokens and state.ended."""

    def accelerator_peak(self) -> int | None:
        """Peak accelerator memory of the request, for backends that run on one."""
        return None

    def reset_accelerator_peak(self) -> None:
        pass

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.model}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stream(self, prompt: TourQuery | Messages, options: GenerationOptions = GenerationOptions(),
               cancel: threading.Event | None = None, lease: Lease | None = None) -> Iterator[Chunk]:
        """The answer piece by piece; the last chunk carries the stats. Stops early, between
        tokens, when `cancel` is set or `options.max_seconds` has passed. With `lease` it answers
        in that slot (the caller gives it back); without, it waits for a slot and gives it back."""
        owned = lease is None
        lease = self.pool.acquire() if owned else lease
        try:
            yield from self._stream_in(lease.item, prompt, options, cancel)
        finally:
            if owned:
                lease.release()

    def _stream_in(self, slot, prompt: TourQuery | Messages, options: GenerationOptions,
                   cancel: threading.Event | None) -> Iterator[Chunk]:
        messages = build_messages(prompt) if isinstance(prompt, TourQuery) else prompt
        stats = GenerationStats()
        state = Pieces(slot=slot)
        stopper = StopMatcher(options.stop)
        self.reset_accelerator_peak()
        start = time.perf_counter()
        deadline = start + options.max_seconds if options.max_seconds else math.inf
        first = None
        cut = None  # why the answer was cut short from outside: "time" or "cancelled"
        with MemorySampler() as memory:
            pieces = self._generate(messages, options, state)
            try:
                for piece in pieces:
                    stats.completion_tokens += 1
                    if first is None:
                        first = time.perf_counter()
                        stats.time_to_first_token_s = first - start
                    text = stopper.push(piece)
                    if text:
                        yield Chunk(text)
                    if stopper.stopped:
                        break
                    if cancel is not None and cancel.is_set():
                        cut = "cancelled"
                        break
                    if time.perf_counter() > deadline:
                        cut = "time"
                        break
            finally:
                pieces.close()  # a backend holding a lock or a server stream lets go here
        tail = "" if stopper.stopped or cut else stopper.flush()
        end = time.perf_counter()
        stats.prompt_tokens = state.prompt_tokens
        if state.completion_tokens is not None:
            stats.completion_tokens = state.completion_tokens
        stats.total_s = end - start
        if first is not None and stats.completion_tokens > 1 and end > first:
            stats.tokens_per_s = (stats.completion_tokens - 1) / (end - first)
        stats.peak_rss_bytes = memory.peak
        stats.peak_accelerator_bytes = self.accelerator_peak()
        stats.finish_reason = cut or ("stop" if (state.ended or stopper.stopped) else "length")
        yield Chunk(tail, stats)

    def complete(self, prompt: TourQuery | Messages, options: GenerationOptions = GenerationOptions()) -> Answer:
        chunks = list(self.stream(prompt, options))
        return Answer("".join(c.text for c in chunks).strip(), chunks[-1].stats, [c.text for c in chunks])
