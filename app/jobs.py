"""Answers that outlive their visitors safely: each runs in a thread of its own, in a slot it leased
before anything was sent, and gives the slot back however it ends.

Visitors leave mid-answer (a closed tab, a cut `curl -N`), read slowly, or never read at all. A
generator handed to the web framework would hold its llama.cpp context until someone closed it,
and a visitor who left closes nothing. So the model's loop never runs at the reader's pace: a
`Job` thread writes every event into the job's own buffer and ends on its own (end of turn,
max_tokens, the deadline, or `cancel()` from a reader that went away), releasing the slot in a
`finally`. Readers, sync (the page's worker thread) or async (the API's event loop), only read
that buffer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from models.backends.pool import Lease

log = logging.getLogger("tour-guide")
Event = tuple[str, dict]  # ("place" | "token" | "done" | "error", payload)


@dataclass(frozen=True)
class ServingConfig:
    """How the server shares its slots among visitors (`python -m app --help` lists them)."""

    max_queue: int = field(default=16, metadata={
        "help": "requests that may wait for a busy model; past it a request gets 503 at once"})
    queue_wait_s: float = field(default=20.0, metadata={
        "help": "seconds a request waits for a free model before 503 with Retry-After"})
    answer_deadline_s: float = field(default=60.0, metadata={
        "help": "wall time an answer may take beside max_tokens; then it ends where it is"})
    body_timeout_s: float = field(default=10.0, metadata={
        "help": "seconds a client may take to send its request body before 408"})
    shutdown_grace_s: float = field(default=3.0, metadata={
        "help": "on SIGTERM or Ctrl-C, seconds in-flight answers get to end before the server exits"})
    show_unbacked: bool = field(default=False, metadata={
        "help": "far from every known place, show the model's answer even when it is not a plain refusal"})

    def __post_init__(self):
        if self.max_queue < 0:
            raise ValueError("max_queue must be 0 or more")
        for name in ("queue_wait_s", "answer_deadline_s", "body_timeout_s", "shutdown_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")

    @property
    def stale_after_s(self) -> float:
        """Longer than any answer can hold a slot: the deadline is checked between tokens, so a
        slot held past this (plus one slow token's margin) was lost, not busy."""
        return self.answer_deadline_s + 10.0


class Job:
    """One answer being written. `run` is the whole generation (it yields events); the thread
    that runs it owns `lease` and gives it back at the end, whatever happened."""

    def __init__(self, run: Callable[[threading.Event], Iterator[Event]], lease: Lease,
                 on_end: Callable[[Job], None] = lambda job: None):
        self.cancelled = threading.Event()
        self.started = time.monotonic()
        self.outcome: str | None = None  # how it ended: a finish reason (stop, length, time, cancelled) or error
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._wakers: list[Callable[[], None]] = []
        self._run, self._lease, self._on_end = run, lease, on_end
        self._thread = threading.Thread(target=self._work, name="tour-guide-answer", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """The reader is gone (or the server stops): the answer ends within a token."""
        self.cancelled.set()

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.started

    def _push(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            wakers = list(self._wakers)
            self._cond.notify_all()
        for wake in wakers:
            wake()

    def _work(self) -> None:
        try:
            for event in self._run(self.cancelled):
                if event[0] == "done":
                    self.outcome = (event[1].get("timings") or {}).get("finish_reason", "stop")
                self._push(event)
        except Exception as exc:  # a backend failure ends this answer, never the server
            log.exception("generation failed")
            self.outcome = "error"
            self._push(("error", {"error": f"generation failed: {exc}"}))
        finally:
            self._lease.release()
            self._push(("end", {}))
            self._on_end(self)

    def events(self, timeout_s: float | None = None) -> Iterator[Event]:
        """The events so far and as they come, from a plain thread."""
        seen = 0
        while True:
            with self._cond:
                if not self._cond.wait_for(partial(self._beyond, seen), timeout_s):
                    raise TimeoutError("no event from the answer in time")
                batch = self._events[seen:]
            seen += len(batch)
            for event in batch:
                if event[0] == "end":
                    return
                yield event

    def _beyond(self, seen: int) -> bool:
        return len(self._events) > seen

    async def aevents(self) -> AsyncIterator[Event]:
        """The same, from an event loop: the job thread wakes this reader, no thread waits for it."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(ready.set)

        with self._cond:
            self._wakers.append(wake)
        try:
            seen = 0
            while True:
                with self._cond:
                    batch = self._events[seen:]
                    if not batch:
                        ready.clear()
                if not batch:
                    await ready.wait()
                    continue
                seen += len(batch)
                for event in batch:
                    if event[0] == "end":
                        return
                    yield event
        finally:
            with self._cond:
                self._wakers.remove(wake)
