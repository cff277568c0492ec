"""What the LLM corpus writers share: response cache, retry loop, concurrency and cost accounting.

A corpus run sends thousands of paid requests, so the expensive facts are written down the moment
they are known: every answer goes to the on-disk cache as soon as it arrives (a rerun of the same
requests costs nothing), and every token is counted as it is billed. Backends only say how to send
one request and how to read its answer; everything else lives here, once (how a failed attempt is
judged lives in data.generate.retries).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.artifacts import write_atomic
from data.generate.base import GenerationError, GenerationRequest, GenerationResult, ProgressCallback
from data.generate.retries import Failure, MalformedResponse, RetryPolicy
from data.generate.writer_prompt import conversation

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".cache") / "generate"
CACHE_FORMAT = 1  # bump when a record's fields change meaning; part of every key

# USD per million (input, output) tokens, from Anthropic's published prices (checked 2026-11).
# Dated snapshots ("claude-haiku-4-5-20251001") resolve to their alias. Haiku 5.5 is billed in two
# bands; the entry is the band for prompts up to 100k tokens, which is where every corpus prompt is.
PRICES_USD_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-fable-5-1": (10.0, 50.0),
    "claude-fable-5": (10.0, 50.0),
    "claude-mythos-5-1": (10.0, 50.0),
    "claude-mythos-5": (10.0, 50.0),
    "claude-opus-5-5": (4.0, 20.0),
    "claude-opus-5": (5.0, 25.0),
    "claude-opus-4-8": (5.0, 25.0),
    "claude-opus-4-7": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-0": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-5-5": (2.0, 10.0),
    "claude-sonnet-5": (2.0, 10.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-0": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-5-5": (0.10, 0.50),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.80, 4.0),
    "claude-3-haiku": (0.25, 1.25),
}

_SNAPSHOT_SUFFIX = re.compile(r"-(\d{8}|latest)$")


def price_for(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens, or None for a model we hold no price for.

    Only an exact name or a dated snapshot of it matches: "claude-opus-4-9" must not borrow the
    price of "claude-opus-4", since a wrong cost is worse than an admitted unknown one.
    """
    name = model.strip().lower()
    if name in PRICES_USD_PER_MTOK:
        return PRICES_USD_PER_MTOK[name]
    return PRICES_USD_PER_MTOK.get(_SNAPSHOT_SUFFIX.sub("", name))


_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def strip_thinking(text: str) -> str:
    """The answer without a leading <think>...</think> block (Qwen3) and surrounding whitespace.

    An unclosed block means generation stopped mid-thought: there is no answer, so return "".
    """
    text = text.strip()
    if not text.startswith(_THINK_OPEN):
        return text
    end = text.find(_THINK_CLOSE)
    return "" if end < 0 else text[end + len(_THINK_CLOSE) :].strip()


# -- accounting -----------------------------------------------------------------------------------


@dataclass
class Accounting:
    """Running totals of one generator; safe to update from the worker threads."""

    model: str
    price_in: float | None = None  # USD per million input tokens; None when unknown
    price_out: float | None = None
    requests_sent: int = 0  # HTTP requests, retries included
    answered: int = 0  # requests answered by the API this run
    cache_hits: int = 0  # requests answered from the cache, with no HTTP request
    retries: int = 0
    failures: int = 0  # requests that failed for good
    input_tokens: int = 0  # as billed by the API this run (cache hits add nothing)
    output_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **increments: int) -> None:
        with self._lock:
            for name, amount in increments.items():
                setattr(self, name, getattr(self, name) + amount)

    @property
    def cost_usd(self) -> float | None:
        """Spend this run; None (not 0) when the model's price is unknown."""
        if self.price_in is None or self.price_out is None:
            return None
        return (self.input_tokens * self.price_in + self.output_tokens * self.price_out) / 1_000_000

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            row = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        row["cost_usd"] = self.cost_usd
        return row


# -- cache ----------------------------------------------------------------------------------------


def cache_key(*, backend: str, model: str, system: str, user: str, params: Mapping[str, Any],
              follow_up: list[dict[str, str]] | None = None) -> str:
    """SHA-256 over everything that can change an answer; the prompt text itself, not its inputs.
    `follow_up` are the turns after the first user message (a rewrite's); a first try has none,
    so its key is what it was before rewrites existed."""
    keyed = {"format": CACHE_FORMAT, "backend": backend, "model": model, "system": system, "user": user,
             "params": params}
    if follow_up:
        keyed["follow_up"] = follow_up
    blob = json.dumps(
        keyed,
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """One JSON file per key. Files appear whole or not at all, so a killed run leaves no debris
    that a rerun could mistake for an answer."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else DEFAULT_CACHE_DIR

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            record = json.loads(self.path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache entry %s: %s", self.path(key), exc)
            return None
        return record if isinstance(record, dict) and isinstance(record.get("text"), str) else None

    def put(self, key: str, record: dict) -> None:
        target = self.path(key)
        try:
            write_atomic(target, json.dumps(record, ensure_ascii=False, indent=1))
        except OSError as exc:
            # The answer is still good for this run; losing only its reuse beats failing the request.
            log.warning("could not write cache entry %s: %s", target, exc)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json")) if self.directory.is_dir() else 0


# -- one answer -----------------------------------------------------------------------------------


@dataclass
class WriterReply:
    """One 2xx answer as a corpus writer read it from its SDK, before the shared checks."""

    text: str  # raw, <think> block and all
    model: str  # the model the server says wrote it
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    usage_reported: bool = True  # some OpenAI-compatible servers omit usage; then tokens are 0


# Anthropic's and OpenAI's names for the same two endings.
_TRUNCATED = {"max_tokens", "length"}
_REFUSED = {"refusal", "content_filter"}


def field_of(obj: object, name: str) -> Any:
    """A field of an SDK model or of a plain dict (the SDKs leave unknown union members as dicts)."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def token_count(usage: object, name: str) -> int | None:
    value = field_of(usage, name) if usage is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class LLMOptions:
    """Settings every LLM backend takes as keyword arguments."""

    cache_dir: str | Path | None = None  # None: .cache/generate under the current directory
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 60.0  # seconds, per HTTP attempt
    max_tokens: int = 700
    price_in: float | None = None  # USD per million tokens; overrides the price table
    price_out: float | None = None
    retry_base_delay: float = 1.0
    retry_max_delay: float = 30.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)  # tests record waits

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if (self.price_in is None) != (self.price_out is None):
            raise ValueError("give both price_in and price_out (USD per million tokens), or neither")


class LLMGenerator:
    """A Generator backed by a remote model. Subclasses implement `_send` and `_classify`."""

    name = "llm"

    def __init__(self, model: str, options: LLMOptions):
        self.model = model
        self.options = options
        self.cache = ResponseCache(options.cache_dir)
        self.retry = RetryPolicy(
            max_retries=options.max_retries,
            base_delay=options.retry_base_delay,
            max_delay=options.retry_max_delay,
            max_retry_after=options.max_retry_after,
        )
        prices = (options.price_in, options.price_out) if options.price_in is not None else price_for(model)
        price_in, price_out = prices if prices is not None else (None, None)
        self.accounting = Accounting(model=model, price_in=price_in, price_out=price_out)

    # -- what a backend provides --------------------------------------------------------------

    def _sampling_params(self, request: GenerationRequest) -> dict[str, Any]:
        """Everything besides the prompt that shapes the answer; part of the cache key."""
        return {"max_tokens": self.options.max_tokens, "seed": request.seed}

    def _send(self, system: str, turns: list[dict[str, str]], request: GenerationRequest) -> WriterReply:
        """One HTTP attempt with the chat `turns` (user first, alternating with assistant). Raise the
        SDK's exceptions, or MalformedResponse, as they come."""
        raise NotImplementedError

    def _classify(self, exc: BaseException) -> Failure | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the HTTP client's connections."""

    def __enter__(self) -> LLMGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Generator interface --------------------------------------------------------------

    def key_for(self, request: GenerationRequest) -> str:
        """The cache key this request's answer is (or will be) stored under."""
        return self._key(*conversation(request), request)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        system, turns = conversation(request)
        key = self._key(system, turns, request)
        record = self.cache.get(key)
        if record is not None:
            self.accounting.add(cache_hits=1)
            return _result(record, key, cached=True, attempts=0, waits=[])
        started = time.perf_counter()
        completion, text, attempts, waits = self._answer(system, turns, request)
        record = {
            "backend": self.name,
            "model": self.model,
            "served_model": completion.model,
            "text": text,
            "raw_text": completion.text,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "usage_reported": completion.usage_reported,
            "stop_reason": completion.stop_reason,
            "seed": request.seed,
            "seconds": round(time.perf_counter() - started, 3),  # what this answer took, retries and waits included
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.cache.put(key, record)
        self.accounting.add(answered=1)
        return _result(record, key, cached=False, attempts=attempts, waits=waits)

    def generate_many(
        self, requests: Iterable[GenerationRequest], progress: ProgressCallback | None = None
    ) -> Iterator[tuple[GenerationRequest, GenerationResult | GenerationError]]:
        """Answer requests on `concurrency` threads, yielding each as it completes.

        Requests are taken from the iterable lazily, a couple of batches ahead of the workers, so a
        consumer that stops early (or a Ctrl-C) leaves nothing queued: only the requests already
        in flight finish, and they land in the cache like every other answer.
        """
        todo = iter(requests)
        ahead = 2 * self.options.concurrency
        pending: dict[Future, GenerationRequest] = {}
        pool = ThreadPoolExecutor(
            max_workers=self.options.concurrency, thread_name_prefix=f"{self.name}-writer"
        )

        def submit_next() -> None:
            request = next(todo, None)
            if request is not None:
                pending[pool.submit(self._outcome, request)] = request

        try:
            for _ in range(ahead):
                submit_next()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    request = pending.pop(future)
                    submit_next()
                    if progress is not None:
                        progress(1)
                    yield request, future.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------------

    def _key(self, system: str, turns: list[dict[str, str]], request: GenerationRequest) -> str:
        params = self._sampling_params(request)
        return cache_key(backend=self.name, model=self.model, system=system, user=turns[0]["content"],
                         params=params, follow_up=turns[1:])

    def _outcome(self, request: GenerationRequest) -> GenerationResult | GenerationError:
        try:
            return self.generate(request)
        except GenerationError as exc:
            return exc
        except Exception as exc:  # one broken request must not end a run of thousands
            self.accounting.add(failures=1)
            error = GenerationError(f"{self.name} {self.model}: unexpected {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error

    def _answer(
        self, system: str, turns: list[dict[str, str]], request: GenerationRequest
    ) -> tuple[WriterReply, str, int, list[float]]:
        """Send until an answer passes or a failure is final: (completion, clean text, attempts, waits)."""
        waits: list[float] = []
        for attempt in itertools.count(1):
            self.accounting.add(requests_sent=1, retries=int(attempt > 1))
            try:
                completion = self._send(system, turns, request)
                self.accounting.add(
                    input_tokens=completion.input_tokens, output_tokens=completion.output_tokens
                )
                return completion, self._check(completion), attempt, waits
            except Exception as exc:
                failure = self._classify(exc)
                if failure is None:
                    raise
                if not failure.retryable or attempt > self.retry.max_retries:
                    self.accounting.add(failures=1)
                    tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    raise GenerationError(
                        f"{self.name} {self.model}: {failure.reason} (gave up after {tries})"
                    ) from exc
                delay = self.retry.delay(attempt, failure.retry_after)
                log.info(
                    "%s %s: %s; retry %d in %.2fs", self.name, self.model, failure.reason, attempt, delay
                )
                waits.append(delay)
                self.options.sleep(delay)
        raise AssertionError("unreachable")

    def _check(self, completion: WriterReply) -> str:
        """The clean answer text, or a Failure saying why this 2xx answer is not one."""
        if completion.stop_reason in _REFUSED:
            # Whatever text came before the refusal is unfinished; asking again mostly pays again.
            raise Failure(
                f"the model declined to answer (stop reason {completion.stop_reason})", retryable=False
            )
        text = strip_thinking(completion.text)
        if text:
            return text
        if completion.stop_reason in _TRUNCATED:
            # Same prompt, same budget, same outcome: retrying would only pay for it again.
            raise Failure(
                f"no answer text within max_tokens={self.options.max_tokens} (stop reason "
                f"{completion.stop_reason}; thinking may have used the budget)",
                retryable=False,
            )
        raise MalformedResponse("empty answer text")


def _result(record: dict, key: str, *, cached: bool, attempts: int, waits: list[float]) -> GenerationResult:
    # A cached result keeps the token counts it was billed with when first written; `cached` says
    # this run paid nothing for them, and the accounting only counts what this run paid.
    return GenerationResult(
        text=record["text"],
        model=str(record.get("served_model") or record.get("model") or ""),
        input_tokens=int(record.get("input_tokens") or 0),
        output_tokens=int(record.get("output_tokens") or 0),
        cached=cached,
        attempts=attempts,
        extra={"cache_key": key, "stop_reason": record.get("stop_reason"), "retry_waits": waits,
               "seconds": record.get("seconds")},  # None for an answer cached before it was timed
    )
