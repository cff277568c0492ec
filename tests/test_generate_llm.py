"""How the LLM corpus writers behave against a live HTTP server, through the real SDK clients.

Nothing here mocks the `anthropic` or `openai` clients: they talk HTTP to tests/fake_llm_server.py,
so these tests also catch an SDK upgrade that changes what gets sent or how errors surface.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from fake_llm_server import ANTHROPIC_PATH, OPENAI_PATH, Behaviour, FakeLLMServer

from data.generate.anthropic_writer import AnthropicGenerator
from data.generate.base import GenerationError, GenerationRequest, GenerationResult
from data.generate.llm import LLMGenerator, price_for, strip_thinking
from data.generate.openai_writer import OpenAIGenerator
from data.generate.retries import parse_retry_after
from data.generate.writer_prompt import render
from data.geo import SHORT_DROP, plus_code_for
from data.poi import POI

FAST_RETRIES = {"retry_base_delay": 0.001, "retry_max_delay": 0.01, "max_retry_after": 0.02}
CLAUDE = "claude-haiku-4-5"  # priced at 1/5 USD per million tokens, and not deprecated
QWEN = "Qwen/Qwen3-32B"


def opera_house() -> POI:
    lat, lon = -33.85681, 151.21514
    return POI(
        id="sydney-opera-house",
        name="Sydney Opera House",
        latitude=lat,
        longitude=lon,
        plus_code=plus_code_for(lat, lon),
        locality="Bennelong Point",
        interests=("architecture", "culture", "views"),
        facts=(
            "Opened in 1973 after fourteen years of construction.",
            "Designed by the Danish architect Jorn Utzon.",
            "Its roof shells are clad in over one million tiles.",
        ),
    )


def make_request(seed: int = 0, style: str = "brief") -> GenerationRequest:
    poi = opera_house()
    return GenerationRequest(
        plus_code=poi.plus_code,
        short_code=poi.plus_code[SHORT_DROP:],
        locality="Sydney",
        pois=(poi,),
        interests=("architecture", "views"),
        style=style,
        seed=seed,
    )


def requests_for(n: int) -> list[GenerationRequest]:
    return [make_request(seed=i) for i in range(n)]


@pytest.fixture
def server():
    with FakeLLMServer() as fake:
        yield fake


def build(backend: str, server: FakeLLMServer, cache_dir: Path, **overrides) -> LLMGenerator:
    options = {"cache_dir": cache_dir, "timeout": 2.0, **FAST_RETRIES, **overrides}
    if backend == "anthropic":
        options.setdefault("model", CLAUDE)
        return AnthropicGenerator(api_key="test-key", base_url=server.url, **options)
    options.setdefault("model", QWEN)
    return OpenAIGenerator(api_key="test-key", base_url=server.openai_url, **options)


@pytest.fixture(params=["anthropic", "openai"])
def make(request, server, tmp_path):
    """make(**options) -> a generator of the parametrized backend pointed at the fake server."""
    made: list[LLMGenerator] = []

    def factory(**overrides) -> LLMGenerator:
        made.append(build(request.param, server, tmp_path / "cache", **overrides))
        return made[-1]

    factory.backend = request.param
    factory.path = ANTHROPIC_PATH if request.param == "anthropic" else OPENAI_PATH
    yield factory
    for generator in made:
        generator.close()


# -- answers ----------------------------------------------------------------------------------


def test_success_returns_text_and_token_counts(make, server):
    server.script(Behaviour.ok("Utzon's shells rise over the harbour.", input_tokens=321, output_tokens=12))
    result = make().generate(make_request())
    assert isinstance(result, GenerationResult)
    assert result.text == "Utzon's shells rise over the harbour."
    assert (result.input_tokens, result.output_tokens) == (321, 12)
    assert result.cached is False and result.attempts == 1
    assert result.model == (CLAUDE if make.backend == "anthropic" else QWEN)
    assert [r.path for r in server.requests] == [make.path]


def test_prompt_model_and_max_tokens_reach_anthropic(server, tmp_path):
    request = make_request(style="stimulate")
    system, user = render(request)
    with build("anthropic", server, tmp_path, max_tokens=321) as generator:
        generator.generate(request)
    (sent,) = server.requests
    assert sent.body["model"] == CLAUDE
    assert sent.body["max_tokens"] == 321
    assert sent.body["system"] == system
    assert sent.body["messages"] == [{"role": "user", "content": user}]
    assert "temperature" not in sent.body  # API version 2026-10-21 answers 400 to any sampling param
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.headers["x-stainless-retry-count"] == "0"
    assert "anthropic-version" in sent.headers


def test_prompt_model_and_sampling_reach_openai_server(server, tmp_path):
    request = make_request(seed=7, style="detailed")
    system, user = render(request)
    with build("openai", server, tmp_path, max_tokens=222, temperature=0.5) as generator:
        generator.generate(request)
    (sent,) = server.requests
    assert sent.body["model"] == QWEN
    assert sent.body["messages"] == [{"role": "system", "content": system}, {"role": "user", "content": user}]
    assert (sent.body["max_tokens"], sent.body["temperature"], sent.body["seed"]) == (222, 0.5, 7)
    assert sent.headers["authorization"] == "Bearer test-key"


@pytest.mark.parametrize(
    ("model", "option", "expected"),
    [
        ("Qwen/Qwen3-32B", None, {"enable_thinking": False}),
        ("qwen3-8b-awq", None, {"enable_thinking": False}),
        ("Qwen/Qwen3-32B", False, None),
        ("meta-llama/Llama-3.1-8B-Instruct", None, None),
        ("meta-llama/Llama-3.1-8B-Instruct", True, {"enable_thinking": False}),
    ],
)
def test_openai_backend_turns_qwen3_thinking_off(server, tmp_path, model, option, expected):
    with build("openai", server, tmp_path, model=model, disable_thinking=option) as generator:
        generator.generate(make_request())
    assert server.requests[0].body.get("chat_template_kwargs") == expected


def test_think_block_is_stripped(make, server):
    server.script(Behaviour.ok("<think>\nThe user wants a brief text.\n</think>\n\n  The Opera House.  \n"))
    assert make().generate(make_request()).text == "The Opera House."


def test_strip_thinking_edge_cases():
    assert strip_thinking("  plain answer \n") == "plain answer"
    assert strip_thinking("<think></think>answer") == "answer"
    assert strip_thinking("<think>cut off mid-thought") == ""
    assert strip_thinking("answer that mentions <think> later") == "answer that mentions <think> later"


# -- retries ----------------------------------------------------------------------------------


def test_rate_limit_is_retried(make, server):
    server.script(Behaviour.status(429, retry_after=0), Behaviour.ok("after the wait"))
    generator = make()
    result = generator.generate(make_request())
    assert (result.text, result.attempts) == ("after the wait", 2)
    assert len(server.requests) == 2
    assert generator.accounting.retries == 1 and generator.accounting.failures == 0


def test_retry_after_is_honoured_and_capped(make, server):
    waits: list[float] = []
    server.script(
        Behaviour.status(429, retry_after=7), Behaviour.status(529, retry_after=600), Behaviour.ok()
    )
    result = make(sleep=waits.append, max_retry_after=60.0).generate(make_request())
    assert result.attempts == 3
    assert waits == [7.0, 60.0]
    assert result.extra["retry_waits"] == waits


def test_backoff_grows_exponentially_with_jitter(make, server):
    waits: list[float] = []
    server.script(*[Behaviour.status(500)] * 3, Behaviour.ok())
    make(sleep=waits.append, retry_base_delay=1.0, retry_max_delay=30.0).generate(make_request())
    assert len(waits) == 3
    for attempt, wait in enumerate(waits):
        assert 0.5 * 2**attempt <= wait <= 2**attempt


@pytest.mark.parametrize("status", [500, 503, 529])
def test_server_errors_are_retried(make, server, status):
    server.script(Behaviour.status(status), Behaviour.ok("recovered"))
    result = make().generate(make_request())
    assert (result.text, result.attempts) == ("recovered", 2)


@pytest.mark.parametrize("broken", [Behaviour.invalid_json(), Behaviour.wrong_shape(), Behaviour.not_json()])
def test_malformed_body_is_retried(make, server, broken):
    server.script(broken, Behaviour.ok("second time lucky"))
    result = make().generate(make_request())
    assert (result.text, result.attempts) == ("second time lucky", 2)


@pytest.mark.parametrize("broken", [Behaviour.invalid_json(), Behaviour.wrong_shape()])
def test_persistently_malformed_body_fails_naming_the_problem(make, server, broken):
    server.script(*[broken] * 3)
    generator = make(max_retries=2)
    with pytest.raises(GenerationError, match=r"malformed response body.*after 3 attempts"):
        generator.generate(make_request())
    assert len(server.requests) == 3
    assert generator.accounting.failures == 1
    assert len(generator.cache) == 0  # a broken answer is never cached


def test_empty_answer_is_retried(make, server):
    server.script(Behaviour.ok("<think>only thoughts</think>"), Behaviour.ok("words at last"))
    result = make().generate(make_request())
    assert (result.text, result.attempts) == ("words at last", 2)


def test_refusal_fails_at_once(make, server):
    stop = "refusal" if make.backend == "anthropic" else "content_filter"
    server.script(Behaviour.ok("I would rather", stop_reason=stop))
    with pytest.raises(GenerationError, match=f"declined to answer.*{stop}"):
        make().generate(make_request())
    assert len(server.requests) == 1


def test_running_out_of_tokens_before_any_text_fails_at_once(make, server):
    stop = "max_tokens" if make.backend == "anthropic" else "length"
    server.script(Behaviour.ok("<think>a long unfinished", stop_reason=stop, output_tokens=50))
    generator = make(max_tokens=50)
    with pytest.raises(GenerationError, match="no answer text within max_tokens=50"):
        generator.generate(make_request())
    assert len(server.requests) == 1
    assert generator.accounting.output_tokens == 50  # billed even though unusable


def test_timeout_is_retried(make, server):
    server.script(Behaviour.stall(3.0), Behaviour.ok("in time"))
    started = time.monotonic()
    result = make(timeout=0.3).generate(make_request())
    assert (result.text, result.attempts) == ("in time", 2)
    assert time.monotonic() - started < 2.0


def test_persistent_timeout_fails(server, tmp_path):
    server.script(Behaviour.stall(3.0))
    generator = build("openai", server, tmp_path, timeout=0.3, max_retries=0)
    with generator, pytest.raises(GenerationError, match="timed out"):
        generator.generate(make_request())


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_fail_without_retry(make, server, status):
    server.script(Behaviour.status(status), Behaviour.ok("never reached"))
    generator = make()
    with pytest.raises(GenerationError, match=rf"HTTP {status}") as error:
        generator.generate(make_request())
    assert "fake server says" in str(error.value)  # the API's own explanation is passed on
    assert len(server.requests) == 1
    assert generator.accounting.retries == 0 and generator.accounting.failures == 1


def test_unreachable_server_is_a_retried_connection_error(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    generator = OpenAIGenerator(
        QWEN,
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="k",
        cache_dir=tmp_path,
        max_retries=1,
        **FAST_RETRIES,
    )
    with generator, pytest.raises(GenerationError, match=r"connection error.*after 2 attempts"):
        generator.generate(make_request())


# -- cache ------------------------------------------------------------------------------------


def test_second_run_is_served_from_cache_without_requests(make, server):
    requests = requests_for(4)
    first = {r.seed: res.text for r, res in make(concurrency=2).generate_many(requests)}
    assert len(server.requests) == 4

    again = make()
    second = list(again.generate_many(requests))
    assert len(server.requests) == 4  # not one new HTTP request
    assert {r.seed: res.text for r, res in second} == first
    assert all(res.cached and res.attempts == 0 for _, res in second)
    assert again.accounting.cache_hits == 4 and again.accounting.requests_sent == 0
    assert again.accounting.cost_usd in (0.0, None)


def test_cache_is_one_json_file_per_key_and_leaves_no_temp_files(make, server, tmp_path):
    generator = make()
    for request in requests_for(3):
        generator.generate(request)
    cache_dir = tmp_path / "cache"
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        f"{generator.key_for(r)}.json" for r in requests_for(3)
    )


def test_cache_key_covers_seed_model_and_prompt(server, tmp_path):
    with build("openai", server, tmp_path) as a, build("openai", server, tmp_path, model="other") as b:
        assert a.key_for(make_request(seed=1)) != a.key_for(make_request(seed=2))
        assert a.key_for(make_request(style="brief")) != a.key_for(make_request(style="detailed"))
        assert a.key_for(make_request()) != b.key_for(make_request())
        assert a.key_for(make_request()) == a.key_for(make_request())


def test_corrupt_cache_entry_is_refetched(make, server, tmp_path):
    generator = make()
    request = make_request()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{generator.key_for(request)}.json").write_text('{"text": "half', encoding="utf-8")
    server.script(Behaviour.ok("fresh"))
    assert generator.generate(request).text == "fresh"
    assert generator.generate(request).cached


def test_interrupted_run_keeps_finished_answers(make, server):
    requests = requests_for(6)
    run = make(concurrency=1).generate_many(requests)
    finished = [next(run), next(run)]
    run.close()  # the consumer stops part way, as after a crash or Ctrl-C

    rerun = make(concurrency=1)
    outcomes = {r.seed: res for r, res in rerun.generate_many(requests)}
    for request, result in finished:
        assert outcomes[request.seed].cached
        assert outcomes[request.seed].text == result.text
    assert len(server.requests) <= len(requests) + 1  # at most the one in flight was sent twice
    assert all(isinstance(res, GenerationResult) for res in outcomes.values())


# -- concurrency ------------------------------------------------------------------------------


def test_generate_many_yields_failures_instead_of_raising(make, server):
    server.script(Behaviour.status(400))
    done: list[int] = []
    outcomes = list(make(concurrency=4).generate_many(requests_for(8), progress=done.append))
    assert len(outcomes) == 8 and sum(done) == 8
    assert sorted(r.seed for r, _ in outcomes) == list(range(8))
    errors = [o for _, o in outcomes if isinstance(o, GenerationError)]
    assert len(errors) == 1 and "HTTP 400" in str(errors[0])


def test_generate_many_runs_requests_concurrently(make, server):
    # Four answers that each take 0.25 s: in sequence that is a second, on four threads a quarter.
    server.script(*[Behaviour.stall(0.25)] * 4)
    started = time.monotonic()
    outcomes = list(make(concurrency=4).generate_many(requests_for(4)))
    assert time.monotonic() - started < 0.75
    assert all(isinstance(o, GenerationResult) for _, o in outcomes)


def test_unexpected_error_in_one_request_does_not_end_the_run(make, server):
    bad = make_request(style="no-such-style")  # writer_prompt raises KeyError for it
    outcomes = list(make().generate_many([make_request(), bad]))
    by_style = {r.style: o for r, o in outcomes}
    assert isinstance(by_style["brief"], GenerationResult)
    assert isinstance(by_style["no-such-style"], GenerationError)
    assert "KeyError" in str(by_style["no-such-style"])


# -- accounting -------------------------------------------------------------------------------


def test_accounting_totals_and_cost(server, tmp_path):
    server.script(
        Behaviour.ok(input_tokens=1000, output_tokens=200),
        Behaviour.status(429, retry_after=0),
        Behaviour.ok(input_tokens=3000, output_tokens=800),
        Behaviour.status(401),
    )
    with build("anthropic", server, tmp_path) as generator:
        generator.generate(make_request(seed=1))
        generator.generate(make_request(seed=2))
        with pytest.raises(GenerationError):
            generator.generate(make_request(seed=3))
        generator.generate(make_request(seed=1))  # cache hit: no request, no cost
        totals = generator.accounting.to_dict()
    assert totals == {
        "model": CLAUDE,
        "price_in": 1.0,
        "price_out": 5.0,
        "requests_sent": 4,
        "answered": 2,
        "cache_hits": 1,
        "retries": 1,
        "failures": 1,
        "input_tokens": 4000,
        "output_tokens": 1000,
        "cost_usd": pytest.approx((4000 * 1.0 + 1000 * 5.0) / 1e6),
    }


def test_accounting_is_thread_safe(make, server):
    generator = make(concurrency=8)
    server.script(*[Behaviour.ok(input_tokens=10, output_tokens=3)] * 24)
    assert len(list(generator.generate_many(requests_for(24)))) == 24
    totals = generator.accounting
    assert (totals.requests_sent, totals.answered, totals.input_tokens, totals.output_tokens) == (
        24,
        24,
        240,
        72,
    )


def test_unknown_model_costs_none_and_prices_can_be_overridden(server, tmp_path):
    server.script(Behaviour.ok(input_tokens=2_000_000, output_tokens=1_000_000))
    with build("openai", server, tmp_path / "a") as unknown:
        unknown.generate(make_request())
        assert unknown.accounting.cost_usd is None
        assert unknown.accounting.to_dict()["cost_usd"] is None
    server.script(Behaviour.ok(input_tokens=2_000_000, output_tokens=1_000_000))
    with build("openai", server, tmp_path / "b", price_in=0.5, price_out=2.0) as priced:
        priced.generate(make_request())
        assert priced.accounting.cost_usd == pytest.approx(3.0)
    with pytest.raises(ValueError, match="both price_in and price_out"):
        build("openai", server, tmp_path, price_in=1.0)


def test_price_table():
    assert price_for("claude-sonnet-4-5") == (3.0, 15.0)
    assert price_for("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert price_for("claude-haiku-4-5-20251001") == (1.0, 5.0)
    assert price_for("claude-opus-4-5") == (5.0, 25.0)
    assert price_for("claude-opus-4-9") is None  # no guessing from a neighbour
    assert price_for("Qwen/Qwen3-32B") is None


def test_parse_retry_after():
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# -- configuration ----------------------------------------------------------------------------


def test_anthropic_needs_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        AnthropicGenerator(cache_dir=tmp_path)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    AnthropicGenerator(cache_dir=tmp_path).close()


def test_anthropic_refuses_temperature(tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        AnthropicGenerator(api_key="k", cache_dir=tmp_path, temperature=0.7)


def test_openai_key_falls_back_to_empty_for_vllm(monkeypatch, server, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIGenerator(QWEN, base_url=server.openai_url, cache_dir=tmp_path) as generator:
        generator.generate(make_request())
    assert server.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_default_cache_dir_is_under_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with AnthropicGenerator(api_key="k") as generator:
        assert generator.cache.directory == Path(".cache/generate")
