"""Write, check, and send a rejected text back to its writer with the reasons, a few times.

Round 0 writes every request. Each text the check rejects goes back to the same writer in the next
round, as the writer's own answer followed by the reasons (data.generate.writer_prompt.conversation),
until it passes or `rewrites` rounds are spent. Every try is an ordinary request of the writer, so
an LLM writer caches each one as it arrives: an interrupted run loses nothing, and a rerun replays
every round from the cache (the check is deterministic, so it rejects the same texts again).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from data.generate.base import GenerationError, GenerationRequest, GenerationResult, Generator, Revision

Check = Callable[[str, GenerationRequest], list[str]]  # why a text is rejected; empty when accepted


@dataclass
class Try:
    """One text written for one request, and what the check made of it."""

    index: int  # the request's position in the list given to `write_checked`
    number: int  # 0 for the first write, then 1, 2, ... for the rewrites
    request: GenerationRequest  # as sent: a rewrite carries the rejected text in `revision`
    outcome: GenerationResult | GenerationError
    problems: list[str]  # empty: accepted
    final: bool  # no further try follows: accepted, failed, or out of rewrites

    @property
    def text(self) -> str | None:
        return self.outcome.text if isinstance(self.outcome, GenerationResult) else None


@dataclass
class RewriteTally:
    """What the rounds did: how many texts each round sent and accepted, why it rejected the rest,
    and what the tries cost. Tokens and seconds count every try, cached or not, as first written:
    the cost of the corpus, not of this run (llm.Accounting has that)."""

    requests: int
    rewrites: int
    rounds: list[dict] = field(default_factory=list)
    accepted_at_try: Counter[int] = field(default_factory=Counter)  # tries (1 = first write) -> samples
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    timed_tries: int = 0  # tries whose answer records its time (cached before timing existed: not)

    def record(self, attempt: Try) -> None:
        while len(self.rounds) <= attempt.number:
            self.rounds.append({"round": len(self.rounds), "sent": 0, "accepted": 0, "rejected": 0, "failed": 0,
                                "reasons": Counter()})
        row = self.rounds[attempt.number]
        row["sent"] += 1
        if isinstance(attempt.outcome, GenerationError):
            row["failed"] += 1
        elif attempt.problems:
            row["rejected"] += 1
            row["reasons"].update(p.split(":")[0] for p in attempt.problems)
        else:
            row["accepted"] += 1
            self.accepted_at_try[attempt.number + 1] += 1
        if isinstance(attempt.outcome, GenerationResult):
            self.input_tokens += attempt.outcome.input_tokens
            self.output_tokens += attempt.outcome.output_tokens
            seconds = attempt.outcome.extra.get("seconds")
            if seconds is not None:
                self.seconds += seconds
                self.timed_tries += 1

    def to_dict(self) -> dict:
        accepted = sum(self.accepted_at_try.values())
        tries = sum(r["sent"] for r in self.rounds)
        rounds, so_far = [], 0
        for row in self.rounds:
            so_far += row["accepted"]
            # acceptance: the share of all requests accepted once this round is done
            rounds.append({**row, "reasons": dict(row["reasons"].most_common()),
                           "acceptance": so_far / self.requests if self.requests else None})
        per = (lambda total: total / accepted if accepted else None)  # noqa: E731
        return {
            "requests": self.requests,
            "max_rewrites": self.rewrites,
            "tries": tries,
            "accepted": accepted,
            "rounds": rounds,
            "accepted_at_try": {str(k): v for k, v in sorted(self.accepted_at_try.items())},
            "tries_per_accepted": per(sum(k * v for k, v in self.accepted_at_try.items())),
            "all_tries_per_accepted": per(tries),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "writer_seconds": round(self.seconds, 3),
            "timed_tries": self.timed_tries,
            "tokens_per_accepted": per(self.input_tokens + self.output_tokens),
            "seconds_per_accepted": per(self.seconds) if self.timed_tries == tries else None,
        }


def write_checked(generator: Generator, requests: Sequence[GenerationRequest], check: Check, rewrites: int,
                  tally: RewriteTally | None = None) -> Iterator[Try]:
    """Every try for `requests`, as each is checked: round 0 for all, then up to `rewrites` rounds
    for the texts rejected in the round before. A failed request (GenerationError) is not retried
    here: the writer has already retried it."""
    if rewrites < 0:
        raise ValueError(f"rewrites must be 0 or more, got {rewrites}")
    pending = list(enumerate(requests))
    for number in range(rewrites + 1):
        index = {id(request): k for k, request in pending}
        again: list[tuple[int, GenerationRequest]] = []
        for request, outcome in generator.generate_many([request for _, request in pending]):
            k = index[id(request)]
            failed = isinstance(outcome, GenerationError)
            problems = [f"failed: {outcome}"] if failed else check(outcome.text, request)
            retry = not failed and bool(problems) and number < rewrites
            if retry:
                again.append((k, replace(request, revision=Revision(outcome.text, tuple(problems)))))
            attempt = Try(k, number, request, outcome, problems, final=not retry)
            if tally is not None:
                tally.record(attempt)
            yield attempt
        if not again:
            return
        pending = sorted(again, key=lambda pair: pair[0])
