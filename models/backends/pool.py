"""The slots a backend answers in: who holds one, for how long, and who waits.

A llama.cpp context (or a torch model's single KV cache) serves one answer at a time. Every
answer leases a slot and gives it back however it ends; a visitor who waits for one waits a
bounded time in a bounded line, and is told `Busy` (with when to come back) rather than hanging.
The pool knows how long each lease has been held, so a server can say when one was lost.

    pool = Pool(contexts, max_waiting=8)
    lease = pool.acquire(timeout_s=20)   # Busy after 20 s, or at once when 8 already wait
    try:
        ...use lease.item...
    finally:
        lease.release()                  # idempotent
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
# The first guess of an answer's length, for Retry-After before any answer has finished.
_FIRST_GUESS_S = 5.0


class Busy(RuntimeError):
    """No slot came free in time, the line was full, or the pool is closing: not a failure of the
    model, so not a BackendError. `retry_after_s` is when a client might try again (Retry-After)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Lease(Generic[T]):
    pool: Pool[T]
    item: T
    since: float  # time.monotonic() when it was taken

    def release(self) -> None:
        self.pool.release(self)

    def __enter__(self) -> Lease[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass(frozen=True)
class PoolStats:
    total: int
    free: int
    busy: int
    waiting: int
    oldest_held_s: float | None  # age of the longest-held lease; None when all are free

    def to_json(self) -> dict:
        oldest = None if self.oldest_held_s is None else round(self.oldest_held_s, 2)
        return {"total": self.total, "free": self.free, "busy": self.busy, "waiting": self.waiting,
                "oldest_held_s": oldest}


class Pool(Generic[T]):
    def __init__(self, items: list[T], max_waiting: int = 8):
        if not items:
            raise ValueError("a pool needs at least one slot")
        if max_waiting < 0:
            raise ValueError("max_waiting must be 0 or more")
        self.total = len(items)
        self.max_waiting = max_waiting
        self._free = list(items)
        self._held: list[Lease[T]] = []
        self._waiting = 0
        self._closed = False
        self._cond = threading.Condition()
        self._mean_hold_s = _FIRST_GUESS_S  # a running mean of how long answers hold a slot

    def acquire(self, timeout_s: float | None = None, abandoned: threading.Event | None = None) -> Lease[T]:
        """A free slot, waiting up to `timeout_s` (None: as long as it takes) behind at most
        `max_waiting` others; Busy otherwise. A waiter whose `abandoned` is set (its client left;
        call `wake` after setting it) leaves the line with Busy at once instead of taking a slot."""
        gone = abandoned.is_set if abandoned is not None else lambda: False
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down", self._retry_after())
            if not self._free and self._waiting >= self.max_waiting:
                raise Busy(f"all {self.total} slots are busy and {self._waiting} requests already wait",
                           self._retry_after())
            self._waiting += 1
            try:
                ready = self._cond.wait_for(lambda: self._free or self._closed or gone(), timeout_s)
            finally:
                self._waiting -= 1
            if self._closed:
                raise Busy("the server is shutting down", self._retry_after())
            if gone():
                self._cond.notify()  # the slot this waiter may have been woken for goes to the next
                raise Busy("the client left while it waited", self._retry_after())
            if not ready:
                raise Busy(f"no slot came free within {timeout_s:g} s", self._retry_after())
            lease = Lease(self, self._free.pop(), time.monotonic())
            self._held.append(lease)
            return lease

    def release(self, lease: Lease[T]) -> None:
        with self._cond:
            if not any(held is lease for held in self._held):
                return  # given back already
            self._held = [held for held in self._held if held is not lease]
            self._free.append(lease.item)
            self._mean_hold_s = 0.8 * self._mean_hold_s + 0.2 * (time.monotonic() - lease.since)
            self._cond.notify()

    def wake(self) -> None:
        """Let every waiter look again (one of them was abandoned)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse every new lease and wake every waiter with Busy; held leases stay until released."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> PoolStats:
        with self._cond:
            now = time.monotonic()
            oldest = max((now - held.since for held in self._held), default=None)
            return PoolStats(self.total, len(self._free), len(self._held), self._waiting, oldest)

    def _retry_after(self) -> int:
        # The line ahead drains about `total` answers per mean answer time.
        ahead = self._waiting + 1
        return max(1, math.ceil(self._mean_hold_s * ahead / self.total))
