"""The grounding check (data.grounding) and rewrite-on-reject (data.generate.rewrite).

A corpus text may state only numbers and names its request gave the writer; a rejected text goes
back to the same writer with the reasons, a bounded number of times, every try cached. The rewrite
tests drive the real `openai` SDK against tests/fake_llm_server.py; tests/test_llama_server_writer.py
does the same against llama.cpp's own server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from fake_llm_server import Behaviour, FakeLLMServer

from data.build import BuildConfig, build
from data.generate.base import GenerationRequest, Revision
from data.generate.openai_writer import OpenAIGenerator
from data.generate.registry import WriterOptions
from data.generate.rewrite import RewriteTally, write_checked
from data.generate.writer_prompt import conversation
from data.grounding import grounding_problems, ungrounded
from data.poi import SYDNEY, load_pois
from data.refusal import REFUSALS
from data.sampling import SamplingConfig, cells_from_pois
from data.validate import PlaceNames, text_problems

FIXTURE = Path(__file__).parent / "fixtures" / "pois_small.jsonl"


def request_for(poi_id: str, style: str = "detailed", pois_file: Path = SYDNEY) -> GenerationRequest:
    cell = next(c for c in cells_from_pois(load_pois(pois_file)) if c.pois[0].id == poi_id)
    return GenerationRequest(cell.plus_code, cell.short_code, cell.locality, cell.pois, ("history",), style)


def spans(text: str, request: GenerationRequest, mode: str = "strict") -> list[tuple[str, str]]:
    return [(u.kind, u.span) for u in ungrounded(text, request, mode)]


# -- what the check rejects ---------------------------------------------------------------------


def test_the_issue_s_customs_house_text_is_rejected_for_every_invented_name_and_number():
    # The text SmolLM2 wrote in issue 31; its 1845 is in the facts, the rest is not.
    text = ("Customs House, first built in 1845, shows an architectural style influenced by the likes of "
            "King David. It has hosted several major events throughout its 173 years; it is also home to "
            "the Australian Customs Museum. The museum itself is designed by a contemporary architect who "
            "recently completed his career at the Sydney Museum.")
    request = request_for("customs-house")
    assert grounding_problems(text, request) == [
        "grounding: name 'King David' is not in the facts",
        "grounding: number '173' is not in the facts",
        "grounding: name 'Australian Customs Museum' is not in the facts",
        "grounding: name 'Sydney Museum' is not in the facts",
    ]
    assert [p.split(":")[0] for p in text_problems(text, request, PlaceNames(load_pois(SYDNEY)))] == ["grounding"] * 4


def test_a_number_must_have_its_value_among_the_request_s_numbers():
    request = request_for("sydney-harbour-bridge")  # 1932, eight years, 503 metres, 134 metres
    assert spans("It opened in March 1932 after eight years of work.", request) == []
    assert spans("It opened in 1932 after 8 years; the arch spans 503m and rises 134 metres.", request) == []
    assert spans("It opened in 1931 after nine years; 52,800 tonnes of steel.", request) == [
        ("number", "1931"), ("number", "nine"), ("number", "52,800")]
    assert spans("Built in the 1920s, a 20th-century icon.", request) == [("number", "1920s"), ("number", "20th")]
    assert spans("About two hundred and fifty workers built one of the world's great arches.", request) == [
        ("number", "two hundred and fifty")]  # a lone "one" counts nothing


def test_the_request_s_own_plus_code_is_an_address_not_a_number():
    request = request_for("sydney-harbour-bridge")
    assert spans(f"Sydney Harbour Bridge is at {request.short_code}, opened in 1932.", request) == []
    assert spans("Sydney Harbour Bridge is at 46X7+99.", request) == [("code", "46X7+99")]


def test_a_name_must_occur_in_the_request_and_sentence_openers_are_not_names():
    request = request_for("sydney-opera-house")  # Jørn Utzon, Bennelong Point, Queen Elizabeth II, UNESCO ...
    grounded = ("Designed by Jorn Utzon, the Opera House stands on Bennelong Point. Visit the Concert Hall: "
                "Utzon's shells hold more than a million glazed tiles. The UNESCO World Heritage Site opened in 1973.")
    assert spans(grounded, request) == []
    assert spans("Walk to the Opera House, where Frank Sinatra sang in the Utzon Room.", request) == [
        ("name", "Frank Sinatra"), ("name", "Utzon Room")]
    assert spans("Visit King David's Opera House.", request) == [("name", "Visit King David's Opera House")]
    assert spans("I know nothing more. Look at the Plus Code on your map.", request) == []
    # The blind spot, stated: a lone made-up name that opens a sentence is not seen.
    assert spans("Napoleon never saw it.", request) == []


def test_a_name_is_quoted_as_written_and_ends_at_a_line_break():
    request = request_for("kirribilli-house")
    assert spans("Robert Campbell\nLocated on the harbour. A visit to St. Mary's Cathedral.", request) == [
        ("name", "Robert Campbell"), ("name", "St. Mary's Cathedral")]
    # the cell's locality (or the country) run into a name, and the app's own words, are no invention
    assert spans("Kirribilli House Sydney is at Plus Code 46X9+CM Sydney, Australia.", request) == []


def test_lenient_accepts_recombined_names_and_spelled_numbers_strict_does_not():
    request = request_for("sydney-opera-house")
    text = "The Utzon Opera House took fourteen years."
    assert spans(text, request, "strict") == [("name", "Utzon Opera House"), ("number", "fourteen")]
    assert spans(text, request, "lenient") == []
    assert spans("The Utzon Opera House of King George opened in 1974.", request, "lenient") == [
        ("name", "Utzon Opera House of King George"), ("number", "1974")]
    assert spans(text, request, "off") == []
    with pytest.raises(ValueError, match="grounding mode"):
        ungrounded(text, request, "sometimes")


def test_another_cell_s_place_is_reported_once_as_a_wrong_place():
    request = request_for("hyde-park-barracks", "brief", FIXTURE)
    problems = text_problems("Hyde Park Barracks is next to Bondi Beach, built in 1817.", request,
                             PlaceNames(load_pois(FIXTURE)))
    assert problems == ["wrong place: names POI(s) of another cell ['Bondi Beach']"]


def test_the_shipped_template_corpus_has_no_grounding_reject(tmp_path):
    summary = build(BuildConfig(), tmp_path, progress=False)  # grounding strict is the default
    assert summary["grounding"] == "strict"
    assert "grounding" not in summary["reject_reasons"]
    assert summary["rewrites"]["max_rewrites"] == 0  # the template writer is never asked twice
    assert sum(summary["accepted"].values()) > 3000


# -- rewrites -----------------------------------------------------------------------------------

INVENTED = ("The Sydney Opera House opened in 1973, blessed by King David. "
            "Walk around its shells at sunset: can you see the tiles?")
# Two sentences with a question: fits brief and stimulate, too short for detailed.
GROUNDED = ("The Sydney Opera House opened in 1973 on Bennelong Point, to a design by Jørn Utzon. "
            "Walk around its shells at sunset: can you see how the tiles catch the light over the water?")
DETAILED = ("The Sydney Opera House is a performing arts centre on Bennelong Point. It was designed by the Danish "
            "architect Jørn Utzon. It opened in 1973. Its roof shells are clad in ceramic tiles, and it was listed "
            "as a World Heritage Site in 2007, so take your time to walk all the way around it.")


@pytest.fixture
def opera_file(tmp_path) -> Path:
    src = tmp_path / "opera.jsonl"
    src.write_text(json.dumps(load_pois(FIXTURE)[0].to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
    return src


def writer_config(server: FakeLLMServer, opera_file: Path, cache: Path, **overrides) -> BuildConfig:
    # One writer thread: the scripted answers meet the requests in order.
    writer = WriterOptions(model="Qwen/Qwen3-32B", base_url=server.openai_url, cache_dir=cache, concurrency=1)
    return BuildConfig(pois=(opera_file,), backend="openai", writer=writer,
                       sampling=SamplingConfig(samples_per_cell=3), **overrides)


def test_a_rejected_text_goes_back_to_its_writer_with_the_reasons_until_it_passes(tmp_path, opera_file):
    with FakeLLMServer() as server:
        # round 0: three invented texts; round 1: brief and stimulate pass, detailed is too short; round 2: it passes
        server.script(*[Behaviour.ok(INVENTED, input_tokens=300, output_tokens=30)] * 3,
                      *[Behaviour.ok(GROUNDED, input_tokens=400, output_tokens=40)] * 3,
                      Behaviour.ok(DETAILED, input_tokens=500, output_tokens=60))
        config = writer_config(server, opera_file, tmp_path / "cache")
        summary = build(config, tmp_path / "corpus", progress=False)

        assert len(server.requests) == 7
        # the second round's first request: the same prompt, the writer's own text, then the reasons
        system, turns = server.requests[3].body["messages"][0], server.requests[3].body["messages"][1:]
        assert system == server.requests[0].body["messages"][0]
        assert [t["role"] for t in turns] == ["user", "assistant", "user"]
        assert turns[0] == server.requests[0].body["messages"][1] and turns[1]["content"] == INVENTED
        assert "- grounding: name 'King David' is not in the facts" in turns[2]["content"]

        tally = summary["rewrites"]
        assert [(r["sent"], r["accepted"]) for r in tally["rounds"]] == [(3, 0), (3, 2), (1, 1)]
        assert [r["acceptance"] for r in tally["rounds"]] == pytest.approx([0, 2 / 3, 1])
        assert tally["rounds"][0]["reasons"]["grounding"] == 3
        assert tally["accepted_at_try"] == {"2": 2, "3": 1}
        assert tally["tries_per_accepted"] == pytest.approx(7 / 3)
        assert tally["input_tokens"] == 3 * 300 + 3 * 400 + 500 and tally["output_tokens"] == 3 * 30 + 3 * 40 + 60
        assert tally["seconds_per_accepted"] > 0
        assert summary["rejected"] == 0 and sum(summary["accepted"].values()) == 3

        rejects = [json.loads(line) for line in (tmp_path / "corpus" / "rejects.jsonl").read_text().splitlines()]
        assert len(rejects) == 4 and not any(r["final"] for r in rejects)
        assert sorted(r["try"] for r in rejects) == [0, 0, 0, 1]
        assert all("grounding: name 'King David' is not in the facts" in r["reasons"] for r in rejects if r["try"] == 0)
        corpus = sorted((tmp_path / "corpus").glob("*.jsonl"))

        # A rerun replays every round from the cache: not one request, the same corpus.
        again = build(config, tmp_path / "again", progress=False)
        assert len(server.requests) == 7
        assert again["accounting"]["cache_hits"] == 7 and again["accounting"]["requests_sent"] == 0
        assert again["rewrites"] == tally
        assert [p.read_bytes() for p in sorted((tmp_path / "again").glob("*.jsonl"))] == [p.read_bytes() for p in corpus]


def test_rewrites_stop_after_the_setting_and_the_last_try_is_the_final_reject(tmp_path, opera_file):
    with FakeLLMServer(default=Behaviour.ok(INVENTED)) as server:
        summary = build(writer_config(server, opera_file, tmp_path / "cache", rewrites=1), tmp_path / "c", progress=False)
        assert len(server.requests) == 6
    assert summary["rejected"] == 3 and summary["reject_reasons"]["grounding"] == 3
    assert summary["rewrites"]["tries_per_accepted"] is None
    rejects = [json.loads(line) for line in (tmp_path / "c" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["try"], r["final"]) for r in rejects] == [(0, False), (1, True)] * 3


def test_grounding_off_accepts_what_strict_rejects(tmp_path, opera_file):
    with FakeLLMServer(default=Behaviour.ok(INVENTED)) as server:
        off = build(writer_config(server, opera_file, tmp_path / "cache", grounding="off", rewrites=0),
                    tmp_path / "off", progress=False)
        strict = build(writer_config(server, opera_file, tmp_path / "cache", rewrites=0), tmp_path / "on", progress=False)
        assert len(server.requests) == 3  # the same first tries: the second build reads them from the cache
    assert off["accepted"] != strict["accepted"] and "grounding" not in off["reject_reasons"]
    assert strict["reject_reasons"]["grounding"] == 3


def test_an_interrupted_rewrite_run_loses_no_try(tmp_path):
    request = request_for("sydney-opera-house", "brief", FIXTURE)
    requests = [replace(request, seed=s) for s in range(3)]

    def check(text: str, r: GenerationRequest) -> list[str]:
        return grounding_problems(text, r)

    with FakeLLMServer(default=Behaviour.ok(INVENTED)) as server:
        def writer() -> OpenAIGenerator:
            return OpenAIGenerator("m", base_url=server.openai_url, cache_dir=tmp_path / "cache", concurrency=1)

        run = write_checked(writer(), requests, check, rewrites=2)
        done = [next(run) for _ in range(4)]  # round 0 and the first rewrite
        run.close()  # Ctrl-C
        sent = len(server.requests)

        tally = RewriteTally(requests=3, rewrites=2)
        again = writer()
        tries = list(write_checked(again, requests, check, rewrites=2, tally=tally))
        assert len(tries) == 9 and all(t.final == (t.number == 2) for t in tries)
        assert again.accounting.cache_hits >= len(done) and again.accounting.requests_sent == 9 - again.accounting.cache_hits
        assert len(server.requests) <= 9 + 1  # at most the one in flight at the interruption was sent twice
        assert sent >= len(done)
        assert tally.to_dict()["tries"] == 9 and tally.to_dict()["accepted"] == 0


def test_a_rewrite_is_its_own_cache_entry_and_a_first_try_keeps_its_key(tmp_path):
    request = request_for("sydney-opera-house", "brief", FIXTURE)
    revised = replace(request, revision=Revision(INVENTED, ("grounding: name 'King David' is not in the facts",)))
    _, turns = conversation(revised)
    assert turns[1] == {"role": "assistant", "content": INVENTED} and "King David" in turns[2]["content"]
    writer = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", cache_dir=tmp_path)
    assert writer.key_for(request) != writer.key_for(revised)
    assert writer.key_for(replace(request, revision=None)) == writer.key_for(request)


def test_the_cli_takes_grounding_and_rewrites(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "data.build", "--help"], capture_output=True, text=True).stdout
    assert "--grounding" in help_text and "--rewrites" in help_text
    bad = subprocess.run([sys.executable, "-m", "data.build", "--out", str(tmp_path), "--grounding", "loose"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "loose" in bad.stderr
    with pytest.raises(ValueError, match="rewrites"):
        BuildConfig(rewrites=-1)


def test_claude_gets_the_rewrite_as_a_conversation_too(tmp_path):
    from data.generate.anthropic_writer import AnthropicGenerator

    request = request_for("sydney-opera-house", "brief", FIXTURE)
    with FakeLLMServer() as server:
        server.script(Behaviour.ok(INVENTED), Behaviour.ok(GROUNDED))
        writer = AnthropicGenerator("claude-haiku-4-5", api_key="test-key", base_url=server.url, cache_dir=tmp_path)
        with writer:
            tries = list(write_checked(writer, [request], lambda text, r: grounding_problems(text, r), rewrites=2))
        assert [(t.number, t.problems) for t in tries] == [(0, ["grounding: name 'King David' is not in the facts"]),
                                                           (1, [])]
        first, second = (r.body for r in server.requests)
        assert second["system"] == first["system"]
        assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
        assert second["messages"][1]["content"] == INVENTED and "King David" in second["messages"][2]["content"]


def test_a_cell_with_no_place_gets_the_refusal_without_asking_the_writer_model(tmp_path, opera_file):
    # The writer's prompt describes the cell's places; with none, a model could only invent one.
    with FakeLLMServer(default=Behaviour.ok(GROUNDED)) as server:
        config = writer_config(server, opera_file, tmp_path / "cache")
        config = replace(config, sampling=replace(config.sampling, samples_per_cell=6, unknown_rate=0.4))
        build(config, tmp_path / "corpus", progress=False)
        rows = [json.loads(line) for split in ("train", "val", "test")
                for line in (tmp_path / "corpus" / f"{split}.jsonl").read_text().splitlines()]
        no_place = [r for r in rows if not r["poi_ids"]]
        asked = [r.body["messages"][-1]["content"] for r in server.requests]
    assert len(no_place) >= 2 and asked
    assert all("Sydney Opera House" in prompt for prompt in asked)  # only the placed cell was sent
    assert all(r["target"] in REFUSALS for r in no_place)
    rejects = [json.loads(line) for line in (tmp_path / "corpus" / "rejects.jsonl").read_text().splitlines()]
    assert all(r["poi_ids"] for r in rejects)  # (the detailed answers the fake writes are too short)
