"""One generation interface: every backend streams the same answer for the same greedy request,
with the same per-request statistics, stop strings and errors."""

import json
import subprocess
import sys
import threading

import pytest
from conftest import tour_queries
from fake_llm_server import OPENAI_PATH, Behaviour, FakeLLMServer

from bench import start_server, stop
from data.prompt import build_messages
from models.backends import BackendError, GenerationOptions, detect_kind, open_backend
from models.backends.base import StopMatcher, TextAssembler
from models.generate import generate_batch
from models.load import load_model

# -- shared machinery -------------------------------------------------------------------------


def test_stop_strings_are_cut_even_across_pieces():
    stop = StopMatcher(("END", "\n\n"))
    out = "".join(stop.push(p) for p in ["Hello ", "wor", "ld E", "N", "D and more"])
    assert out == "Hello world " and stop.stopped
    stop = StopMatcher(("END",))
    assert "".join(stop.push(p) for p in ["no ", "EN", "stop"]) + stop.flush() == "no ENstop"
    assert not stop.stopped


def test_multibyte_characters_split_over_tokens_come_out_whole():
    data = "Jørn 東京 🙂".encode()
    assembler = TextAssembler(lambda i: data[i:i + 1])  # one byte per "token"
    pieces = [assembler.push(i) for i in range(len(data))] + [assembler.flush()]
    assert "".join(pieces) == "Jørn 東京 🙂"
    assert "\ufffd" not in "".join(pieces)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_p=0),
                                 dict(top_p=1.5), dict(max_tokens=0)])
def test_options_are_validated(bad):
    with pytest.raises(ValueError):
        GenerationOptions(**bad)


def test_backend_kind_follows_the_model_reference(micro_teacher, micro_gguf, micro_onnx):
    assert detect_kind(str(micro_gguf["f16"])) == "llamacpp"
    assert detect_kind(str(micro_onnx)) == "onnx"
    assert detect_kind(str(micro_teacher)) == "torch"
    with pytest.raises(BackendError, match="unknown backend"):
        open_backend("tensorrt", str(micro_teacher))
    with pytest.raises(BackendError, match="no GGUF file"):
        open_backend("llamacpp", str(micro_teacher / "missing.gguf"))
    with pytest.raises(BackendError, match="base_url"):
        open_backend("openai", "qwen3-32b")


# -- local backends agree with the reference ---------------------------------------------------


@pytest.fixture(scope="module")
def reference(micro_teacher):
    model, tok = load_model(str(micro_teacher))
    return [generate_batch(model, tok, [build_messages(q)], max_new_tokens=40)[0].text for q in tour_queries()]


@pytest.fixture(params=["torch", "llamacpp", "onnx"])
def local_backend(request, micro_teacher, micro_gguf, micro_onnx):
    model = {"torch": micro_teacher, "llamacpp": micro_gguf["f32"], "onnx": micro_onnx}[request.param]
    with open_backend(request.param, str(model)) as backend:
        yield backend


def test_greedy_stream_equals_the_reference(local_backend, reference):
    for query, expected in zip(tour_queries(), reference):
        chunks = list(local_backend.stream(query, GenerationOptions(max_tokens=40)))
        assert "".join(c.text for c in chunks).strip() == expected
        assert all(c.stats is None for c in chunks[:-1])
        stats = chunks[-1].stats
        assert stats.prompt_tokens > 50 and 0 < stats.completion_tokens <= 40
        assert 0 < stats.time_to_first_token_s <= stats.total_s
        assert stats.tokens_per_s is None or stats.tokens_per_s > 0
        assert stats.peak_rss_bytes > 10 * 2**20
        assert stats.finish_reason == ("stop" if stats.completion_tokens < 40 else "length")


def test_max_tokens_and_stop_strings(local_backend, reference):
    query = tour_queries()[1]
    short = local_backend.complete(query, GenerationOptions(max_tokens=3))
    assert short.stats.completion_tokens == 3 and short.stats.finish_reason == "length"
    expected = reference[1]
    word = expected.split()[2]
    cut = local_backend.complete(query, GenerationOptions(max_tokens=40, stop=(word,)))
    assert cut.text == expected[: expected.index(word)].strip()
    assert cut.stats.finish_reason == "stop"


def test_sampling_is_reproducible_by_seed(local_backend):
    query = tour_queries()[2]
    hot = dict(temperature=1.5, top_p=0.95, max_tokens=24)
    first = local_backend.complete(query, GenerationOptions(seed=7, **hot)).text
    assert local_backend.complete(query, GenerationOptions(seed=7, **hot)).text == first
    others = {local_backend.complete(query, GenerationOptions(seed=s, **hot)).text for s in range(1, 5)}
    assert others - {first}, "different seeds never changed the sample"


def test_concurrent_requests_are_not_mixed(local_backend, reference):
    """llama.cpp's Llama is not thread-safe: four threads asking at once (more than its contexts)
    must each get their own whole answer."""
    results: dict[int, str] = {}

    def ask(i):
        results[i] = local_backend.complete(tour_queries()[i % 3], GenerationOptions(max_tokens=40)).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == [reference[i % 3] for i in range(4)]


def test_llamacpp_streams_two_visitors_at_once_from_its_context_pool(micro_gguf, reference):
    queries, options = tour_queries(), GenerationOptions(max_tokens=40)
    with open_backend("llamacpp", str(micro_gguf["f32"]), threads=1, parallel=2) as backend:
        assert backend.describe()["parallel"] == 2
        first = backend.stream(queries[0], options)
        opening = next(first).text  # the first visitor's stream now holds a context
        second: list[str] = []
        # With a single context this second stream would wait for the first forever.
        worker = threading.Thread(target=lambda: second.extend(c.text for c in backend.stream(queries[1], options)))
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "the second visitor waited for the first"
        assert "".join(second).strip() == reference[1]
        assert (opening + "".join(c.text for c in first)).strip() == reference[0]


# -- a served model ----------------------------------------------------------------------------


def test_openai_backend_streams_from_a_server():
    with FakeLLMServer() as server:
        server.script(Behaviour.ok("Right here stands the Opera House. END of tour", output_tokens=9))
        with open_backend("openai", "qwen3-32b", base_url=server.openai_url) as backend:
            options = GenerationOptions(temperature=0.7, top_p=0.9, max_tokens=64, stop=("END",), seed=3)
            chunks = list(backend.stream(tour_queries()[0], options))
        body = server.bodies(OPENAI_PATH)[0]
    assert "".join(c.text for c in chunks).strip() == "Right here stands the Opera House."
    assert len(chunks) > 3  # one event per word, passed on as they come
    assert body["stream"] is True and body["seed"] == 3 and body["max_tokens"] == 64
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["stop"] == ["END"]
    assert body["messages"] == build_messages(tour_queries()[0])
    assert body["chat_template_kwargs"] == {"enable_thinking": False}  # Qwen3 answers without a think block
    assert chunks[-1].stats.finish_reason == "stop"


def test_openai_usage_is_taken_from_the_server():
    with FakeLLMServer() as server:
        server.script(Behaviour.ok("One two three four.", input_tokens=91, output_tokens=7))
        with open_backend("openai", "student", base_url=server.openai_url) as backend:
            done = backend.complete(tour_queries()[0], GenerationOptions())
    assert done.text == "One two three four."
    assert (done.stats.prompt_tokens, done.stats.completion_tokens) == (91, 7)


def test_openai_errors_become_backend_errors():
    with FakeLLMServer() as server:
        server.script(Behaviour.status(500), Behaviour.status(500))
        with open_backend("openai", "student", base_url=server.openai_url) as backend, pytest.raises(BackendError, match="refused"):
            backend.complete(tour_queries()[0], GenerationOptions())


def test_openai_backend_against_llama_cpp_s_own_server(micro_gguf, reference):
    """The real client against a real OpenAI-compatible server (llama.cpp's, serving the same
    GGUF): the served greedy answer is the local one."""
    server, url = start_server([sys.executable, "-m", "llama_cpp.server", "--model", str(micro_gguf["f32"]),
                                "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", "512", "--n_threads", "1",
                                "--model_alias", "micro"], "/v1/models", timeout_s=60)
    try:
        # llama.cpp's server penalises repeats by default (1.1); greedy means no penalty
        with open_backend("openai", "micro", base_url=f"{url}/v1",
                          extra_body={"repeat_penalty": 1.0}) as backend:
            for query, expected in zip(tour_queries(), reference):
                done = backend.complete(query, GenerationOptions(max_tokens=40))
                assert done.text == expected
                # this server sends no usage while streaming: pieces are counted, the prompt is unknown
                assert done.stats.prompt_tokens is None and 0 < done.stats.completion_tokens <= 40
    finally:
        stop(server)


# -- the command line --------------------------------------------------------------------------


def test_cli_answers_a_plus_code(micro_gguf, reference):
    done = subprocess.run([sys.executable, "-m", "models.backends", "--model", str(micro_gguf["f32"]),
                           "--where", "46V8+84 Sydney", "--interests", "architecture", "--style", "brief",
                           "--max-tokens", "40", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["backend"] == "llamacpp" and answer["location"] == "46V8+84 Sydney"
    assert answer["text"] == reference[0]
    bad = subprocess.run([sys.executable, "-m", "models.backends", "--model", str(micro_gguf["f32"]),
                          "--where", "somewhere", "--interests", "dancing"], capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr
