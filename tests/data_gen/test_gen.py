"""run_gen against a real HTTP server on 127.0.0.1 (data_gen.fake_server): replies counted,
re-asked and written, retries, limits, cache and resume, budgets, structured output per
backend and its fallback, batch mode, passage selection, and bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from data_gen.cache import ReplyCache
from data_gen.commands import rejected_path
from data_gen.fake_server import FakeLLM, body_key
from data_gen.prompts import LAYOUT_TEMPLATES
from sciqa.cli import app
from sciqa.config import GenConfig
from sciqa.errors import SciqaError
from sciqa.io import read_questions

# --- replies: counted, re-asked, written ----------------------------------------------


def test_scripted_replies_are_counted_reasked_and_written(passages_file, tmp_path, run_fake):
    script = {
        "T0": ["malformed"],  # re-asked, then valid
        "T1": ["six_options", "answer_f"],  # both re-asks used up (budget 1) -> lost
        "T2": ["fenced"],
        "T3": ["length"],  # rejected, not re-asked
        "T4": ["duplicate_options"],
    }
    out = tmp_path / "gen" / "q.parquet"
    with FakeLLM(script) as fake:
        counts = run_fake(passages_file, out, fake, "gen.reask_budget=1")
    frame = read_questions(out, require_answer=True)
    assert sorted(frame["id"]) == ["gen-p0-0", "gen-p2-0", "gen-p4-0", "gen-p5-0"]
    assert set(frame["source"]) == {"gen:fake-model"}
    passage = pd.read_parquet(passages_file).loc[2, "text"]
    assert frame.set_index("source_id").loc["p2", "context"] == passage
    replies = counts["replies"]
    assert replies["rejected_by_reason"] == {
        "not_json": 1,
        "wrong_option_count": 1,
        "answer_not_a_letter": 1,
        "finish_length": 1,
        "duplicate_options": 1,
    }
    assert replies["valid"] == 4 and replies["replies"] == 9
    rejects = [json.loads(line) for line in rejected_path(out).read_text().splitlines()]
    assert {r["reason"] for r in rejects} == set(replies["rejected_by_reason"])
    assert all(r["raw"] for r in rejects)
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["stage"] == "gen" and manifest["postprocess"]["kept"] == 4
    assert (out.parent / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("layout", "named"),
    [
        (
            "letters",
            'options B and C are the same ("T0 fact number 1"); write a different option C',
        ),
        ("answer_first", 'two answers are the same ("T0 fact number 1"); write a different wrong'),
    ],
)
def test_reask_names_the_duplicate_option(passages_file, tmp_path, run_fake, layout, named):
    with FakeLLM({"T0": ["duplicate_options"]}) as fake:
        counts = run_fake(passages_file, tmp_path / "q.csv", fake, f"gen.reply_layout={layout}")
    assert counts["replies"]["valid"] == 6
    reask = next(r for r in fake.requests if len(r["messages"]) > 5)["messages"][-1]["content"]
    assert named in reask


def test_several_questions_per_passage_are_separate_requests(passages_file, tmp_path, run_fake):
    with FakeLLM() as fake:
        counts = run_fake(
            passages_file, tmp_path / "q.csv", fake, "gen.questions_per_passage=2", n=3
        )
    assert counts["postprocess"]["kept"] == 6 and len(fake.answered) == 6
    ids = sorted(read_questions(tmp_path / "q.csv")["id"])
    assert ids[:2] == ["gen-p0-0", "gen-p0-1"]


# --- retries, limits, cache and resume, budgets ----------------------------------------


def test_429_500_and_hanging_requests_are_retried_with_backoff(passages_file, tmp_path, run_fake):
    script = {"T0": ["429", "429"], "T1": ["500"], "T2": ["slow"]}
    with FakeLLM(script, slow_seconds=3) as fake:
        counts = run_fake(
            passages_file, tmp_path / "q.csv", fake, "llm.timeout=0.5", "llm.backoff_retries=3"
        )
    assert counts["postprocess"]["kept"] == 6
    assert counts["usage"]["retries"] == 4  # 2 + 1 + 1 (the timed-out one)


def test_retries_give_up_and_rerun_sends_only_what_is_missing(passages_file, tmp_path, run_fake):
    out = tmp_path / "q.csv"
    with FakeLLM({"T3": ["500"] * 3}) as fake:
        first = run_fake(passages_file, out, fake, "llm.backoff_retries=2")
        assert first["replies"]["unanswered"] == 1
        assert first["replies"]["rejected_by_reason"] == {"request_failed": 1}
        before = len(fake.requests)
        second = run_fake(passages_file, out, fake, "llm.backoff_retries=2")
    assert len(fake.requests) - before == 1  # only T3 again
    assert second["usage"]["cache_hits"] == 5
    assert second["postprocess"]["kept"] == 6
    assert max(fake.answered.values()) == 1  # no key was ever answered twice


def test_cache_hit_and_template_edit_invalidates_only_what_it_renders(
    passages_file, tmp_path, run_fake
):
    out = tmp_path / "q.csv"
    with FakeLLM({"T0": ["malformed"]}) as fake:
        run_fake(passages_file, out, fake)
        assert len(fake.requests) == 7  # 6 + the re-ask of T0
        again = run_fake(passages_file, out, fake)
        assert len(fake.requests) == 7 and again["usage"]["cache_hits"] == 7
        templates = LAYOUT_TEMPLATES[GenConfig().reply_layout].read_text()
        edited = tmp_path / "prompts.yaml"
        edited.write_text(templates.replace("That reply was not valid", "Invalid reply"))
        fake.script["T0"] = ["valid", "malformed"]  # T0's next request (re-ask) fails again
        changed = run_fake(passages_file, out, fake, f"gen.prompts={edited}")
    assert len(fake.requests) == 8  # only the re-ask message changed
    assert changed["usage"]["answered"] == 1


def test_cache_rows_survive_reopen(tmp_path):
    cache = ReplyCache(tmp_path / "c.sqlite")
    cache.put("k", {"a": 1}, {"choices": [], "usage": {"prompt_tokens": 3}})
    cache.close()
    again = ReplyCache(tmp_path / "c.sqlite")
    assert again.get("k") == {"choices": [], "usage": {"prompt_tokens": 3}}
    assert again.has(["k", "other"]) == {"k"} and len(again) == 1


def test_fake_server_keys_match_request_bodies():
    assert body_key({"a": 1, "b": 2}) == body_key({"b": 2, "a": 1})


def test_fake_server_random_faults_are_seeded_and_a_resent_body_gets_the_same_reply():
    bodies = [
        {"model": "m", "messages": [{"role": "user", "content": f"Title: T{i}\n"}]}
        for i in range(2000)
    ]

    def replies(fake: FakeLLM) -> list[tuple[int, str]]:
        answers = [fake.chat(b) for b in bodies]
        return [
            (s, r["choices"][0]["message"]["content"] if s == 200 else "") for s, _, r in answers
        ]

    fake, same, other = (FakeLLM(rate_429=0.1, rate_malformed=0.05, seed=s) for s in (0, 0, 1))
    first = replies(fake)
    assert replies(same) == first and replies(other) != first
    busy = sum(s == 429 for s, _ in first) / len(first)
    malformed = sum(s == 200 and "Unfinished" in text for s, text in first) / len(first)
    assert 0.08 < busy < 0.12 and 0.03 < malformed < 0.07
    # malformed follows the body, not the arrival: a resent body gets the same reply
    for (s1, t1), (s2, t2) in zip(first, replies(fake), strict=True):
        if s1 == s2 == 200:
            assert t1 == t2
    for server in (fake, same, other):
        server._server.server_close()


def test_max_requests_stops_cleanly_and_resume_completes(passages_file, tmp_path, run_fake):
    out = tmp_path / "q.csv"
    with FakeLLM() as fake:
        stopped = run_fake(passages_file, out, fake, "llm.concurrency=1", "gen.max_requests=2")
        assert stopped["stopped"].startswith("max_requests=2")
        assert len(read_questions(out)) == 2 and len(fake.requests) == 2
        run_fake(passages_file, out, fake)
    assert len(fake.requests) == 6 and max(fake.answered.values()) == 1
    assert len(read_questions(out)) == 6


def test_max_cost_stops_once_spent(passages_file, tmp_path, run_fake):
    with FakeLLM() as fake:
        counts = run_fake(
            passages_file,
            tmp_path / "q.csv",
            fake,
            "llm.concurrency=1",
            "llm.price_input_per_1k=1.0",
            "gen.max_cost=0.0001",
        )
    assert counts["stopped"].startswith("max_cost") and counts["usage"]["answered"] == 1
    assert counts["usage"]["cost"] > 0


def test_concurrency_limit_is_respected_and_used(passages_file, tmp_path, run_fake):
    """Counted at the server, not timed: 1 means one at a time, 6 overlaps requests."""
    peak = {}
    for concurrency in (1, 6):
        with FakeLLM(latency=0.3) as fake:
            run_fake(passages_file, tmp_path / f"q{concurrency}.csv", fake,
                     f"llm.concurrency={concurrency}")  # fmt: skip
            peak[concurrency] = fake.max_in_flight
    assert peak[1] == 1
    assert 2 <= peak[6] <= 6  # 6 passages, 6 slots: they overlap, never more than the limit


def test_batch_mode_folds_results_into_the_cache(passages_file, tmp_path, run_fake):
    out = tmp_path / "q.csv"
    with FakeLLM({"T1": ["malformed"]}, batch_polls=2) as fake:
        counts = run_fake(passages_file, out, fake, "gen.batch_poll_seconds=0.05", batch=True)
        assert len(fake.batches) == 1
        assert counts["usage"]["batched"] == 6  # every first request went through the batch
        assert counts["usage"]["cache_hits"] == 6  # ...and the online pass found it cached
        assert counts["usage"]["answered"] == 7  # + T1's re-ask, sent online
        assert counts["postprocess"]["kept"] == 6
        run_fake(passages_file, out, fake, "gen.batch_poll_seconds=0.05", batch=True)
        assert len(fake.batches) == 1  # nothing left to submit


# --- structured output: per backend, refused ------------------------------------------


@pytest.mark.parametrize(
    ("owned_by", "backend", "used"),
    [
        ("vllm", "vllm", "json_schema"),
        ("llamacpp", "llama-server", "json_schema"),
        ("me", "llama-cpp-python", "json_object+schema"),
        (None, "generic", "json_schema"),  # no GET /v1/models
    ],
)
def test_backend_is_detected_and_recorded(
    passages_file, tmp_path, run_fake, owned_by, backend, used
):
    with FakeLLM(owned_by=owned_by) as fake:
        counts = run_fake(
            passages_file,
            tmp_path / "q.csv",
            fake,
            "gen.repetition_penalty=1.1",
            "gen.presence_penalty=1.5",
            n=3,
        )
    structured = json.loads((tmp_path / "manifest.json").read_text())["structured_output"]
    assert structured["backend"] == backend and structured["used"] == used
    assert counts["replies"]["valid"] == 3
    body = fake.requests[0]
    assert body["presence_penalty"] == 1.5  # OpenAI-standard: sent to every backend
    if backend == "llama-cpp-python":
        assert body["response_format"]["type"] == "json_object"
        assert body["response_format"]["schema"]["properties"]["correct_answer"]["maxLength"] == 150
        assert body["repeat_penalty"] == 1.1
    elif backend == "vllm":
        assert body["repetition_penalty"] == 1.1
    elif backend == "llama-server":
        assert body["repeat_penalty"] == 1.1
    else:
        assert "repeat_penalty" not in body and "repetition_penalty" not in body


def test_json_schema_refused_falls_back_to_json_object(passages_file, tmp_path, run_fake):
    """Every field refused alone too: the format itself is refused, so it is downgraded."""
    with FakeLLM(reject_json_schema=True) as fake:
        counts = run_fake(passages_file, tmp_path / "q.csv", fake)
    assert counts["postprocess"]["kept"] == 6
    assert counts["structured_output"]["used"] == "json_object"
    assert counts["structured_output"]["downgrades"][0].startswith("json_schema->json_object")
    assert counts["usage"]["format_downgrades"][0].startswith("json_schema->json_object")
    assert counts["usage"]["probes"] == 1 + 5  # question, correct_answer, 4 wrong answers
    answered = [
        r for r in fake.requests if r.get("response_format", {}).get("type") != "json_schema"
    ]
    assert len(answered) == 6


def test_uncompilable_field_is_named_in_a_one_line_error(passages_file, tmp_path, fake_args):
    """A refused json_schema is probed field by field: the refused one is named, no
    silent downgrade to json_object (which would drop the pattern)."""
    with FakeLLM(owned_by="vllm", unsupported_pattern="(?<=") as fake:
        args = ["gen", str(passages_file), "--out", str(tmp_path / "q.csv"), "--n", "3"]
        args += fake_args(fake.base_url, "gen.option_pattern=(?<=x)y")
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "cannot compile the reply schema at field 'correct_answer'" in lines[0]
    assert "gen.option_pattern" in lines[0] and "Grammar error" in lines[0]
    assert not (tmp_path / "q.csv").exists()


# --- passage selection, bad input -----------------------------------------------------


def test_science_filter_keeps_keyword_passages(passages_file, tmp_path, run_fake):
    frame = pd.read_parquet(passages_file).head(4)
    frame.loc[0, "text"] = "A football club founded in 1900. " + "word " * 45
    path = tmp_path / "p.parquet"
    frame.to_parquet(path)
    with FakeLLM() as fake, pytest.raises(SciqaError, match=r"3 pass gen\.science_filter=keywords"):
        run_fake(path, tmp_path / "q.csv", fake, n=4)


def test_embedding_science_filter_uses_seed_questions(
    passages_file, tmp_path, run_fake, hash_encoder
):
    frame = pd.read_parquet(passages_file).head(4)
    frame.loc[0, "text"] = "Football match results " * 20
    path = tmp_path / "p.parquet"
    frame.to_parquet(path)
    seeds = '["Passage about chemical energy in cells, word by word"]'
    with FakeLLM() as fake:
        counts = run_fake(
            path,
            tmp_path / "q.csv",
            fake,
            "gen.science_filter=embedding",
            f"gen.science_seed_questions={seeds}",
            "gen.science_min_similarity=0.3",
            n=3,
            encoder=hash_encoder,
        )
    assert counts["selection"]["science"] == 3
    assert "p0" not in set(read_questions(tmp_path / "q.csv")["source_id"])


def test_missing_key_variable(passages_file, tmp_path, run_fake, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeLLM() as fake, pytest.raises(SciqaError, match="OPENAI_API_KEY"):
        run_fake(passages_file, tmp_path / "q.csv", fake)


def test_unreachable_base_url_is_named(passages_file, tmp_path, run_fake):
    with FakeLLM() as fake:
        pass  # stopped: nothing listens at its base_url any more
    with pytest.raises(SciqaError, match=f"cannot reach llm.base_url {fake.base_url}"):
        run_fake(passages_file, tmp_path / "q.csv", fake, "llm.backoff_retries=1", n=2)


def test_passages_without_text_and_n_too_large(passages_file, tmp_path, run_fake):
    bad = tmp_path / "bad.csv"
    pd.read_parquet(passages_file).drop(columns="text").to_csv(bad, index=False)
    with FakeLLM() as fake:
        with pytest.raises(SciqaError, match=r"bad.csv: missing column\(s\) 'text'"):
            run_fake(bad, tmp_path / "q.csv", fake)
        with pytest.raises(SciqaError, match="--n 7 passages asked for but only 6 qualify"):
            run_fake(passages_file, tmp_path / "q.csv", fake, n=7)
        assert fake.requests == []
