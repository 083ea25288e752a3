"""data_gen against a real HTTP server on 127.0.0.1 (data_gen.fake_server): parsing,
retries, limits, cache and resume, budgets, format fallback, batch mode, post-processing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_gen.cache import ReplyCache
from data_gen.commands import rejected_path, run_gen
from data_gen.fake_server import FakeLLM, body_key
from data_gen.parse import Rejected, parse_reply
from data_gen.postprocess import (
    balance_letters,
    filter_too_easy,
    filter_unanswerable,
    letter_counts,
    remove_duplicates,
    remove_leaks,
)
from sciqa.config import load_config
from sciqa.errors import SciqaError
from sciqa.io import read_questions

LETTERS = ["A", "B", "C", "D", "E"]
VALID = {
    "question": "Which gas do plants absorb?",
    "A": "Carbon dioxide",
    "B": "Oxygen",
    "C": "Nitrogen",
    "D": "Helium",
    "E": "Argon",
    "answer": "A",
}


class HashEncoder:
    """Bag-of-words hashing encoder: same words -> cosine 1, disjoint words -> 0."""

    def encode(self, texts, normalize_embeddings=True, **_):
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), 256))
        for row, text in enumerate(texts):
            for word in str(text).lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 256] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


class FixedScorer:
    """Returns preset probabilities (with context, without context)."""

    name = "fixed"

    def __init__(self, with_context, without_context):
        self.tables = {True: np.asarray(with_context), False: np.asarray(without_context)}

    def probabilities(self, frame, *, use_context):
        return self.tables[use_context][: len(frame)]


def passages(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "passage_id": [f"p{i}" for i in range(n)],
            "title": [f"T{i}" for i in range(n)],
            "text": [
                f"Passage {i} about chemical energy in cells. " + "word " * 45 for i in range(n)
            ],
        }
    )


@pytest.fixture
def passages_file(tmp_path: Path) -> Path:
    path = tmp_path / "passages.parquet"
    passages().to_parquet(path)
    return path


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def config(fake: FakeLLM, *overrides: str):
    fast = [
        f"llm.base_url={fake.base_url}",
        "llm.model=fake-model",
        "llm.sdk_retries=0",
        "llm.backoff_base=0.01",
        "llm.timeout=5",
        "gen.dedup=false",
        "gen.answerability_filter=false",
        "gen.too_easy_filter=false",
    ]
    return load_config(None, [*fast, *overrides])


def run(passages_file, out, fake, *overrides, n=6, **kwargs):
    return run_gen(passages_file, out, config(fake, *overrides, f"gen.n={n}"), **kwargs)


# --- parsing -----------------------------------------------------------------------


def test_parse_valid_and_tolerant_extraction():
    assert parse_reply(json.dumps(VALID), LETTERS).options[0] == "Carbon dioxide"
    chatty = f"Here you go:\n```json\n{json.dumps(VALID)}\n```\nHope it helps {{smile}}"
    assert parse_reply(chatty, LETTERS).answer == "A"
    nested = {"question": "Q?", "options": dict(zip(LETTERS, "vwxyz", strict=True)), "answer": "b"}
    assert parse_reply(json.dumps(nested), LETTERS).answer == "B"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"F": "Neon"}, "wrong_option_count"),
        ({"answer": "F"}, "answer_not_a_letter"),
        ({"C": "oxygen"}, "duplicate_options"),
        ({"E": "All of the above"}, "meta_option"),
        ({"D": "  "}, "empty_option"),
        ({"question": " "}, "empty_prompt"),
        ({"answer": None}, "missing_field"),
    ],
)
def test_parse_rejects_with_reason(change, reason):
    reply = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    with pytest.raises(Rejected) as caught:
        parse_reply(json.dumps(reply), LETTERS)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "text", ['{"question": "Q", "A": ', "no json here", "[1, 2]", "__import__('os')"]
)
def test_parse_never_evaluates_and_rejects_non_objects(text):
    with pytest.raises(Rejected) as caught:
        parse_reply(text, LETTERS)
    assert caught.value.reason == "not_json"


# --- end to end against the fake server --------------------------------------------


def test_scripted_replies_are_counted_reasked_and_written(passages_file, tmp_path):
    script = {
        "T0": ["malformed"],  # re-asked, then valid
        "T1": ["six_options", "answer_f"],  # both re-asks used up (budget 1) -> lost
        "T2": ["fenced"],
        "T3": ["length"],  # rejected, not re-asked
        "T4": ["duplicate_options"],
    }
    out = tmp_path / "gen" / "q.parquet"
    with FakeLLM(script) as fake:
        counts = run(passages_file, out, fake, "gen.reask_budget=1")
    frame = read_questions(out, require_answer=True)
    assert sorted(frame["id"]) == ["gen-p0-0", "gen-p2-0", "gen-p4-0", "gen-p5-0"]
    assert set(frame["source"]) == {"gen:fake-model"}
    assert frame.set_index("source_id").loc["p2", "context"] == passages().loc[2, "text"]
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


def test_429_500_and_hanging_requests_are_retried_with_backoff(passages_file, tmp_path):
    script = {"T0": ["429", "429"], "T1": ["500"], "T2": ["slow"]}
    with FakeLLM(script, slow_seconds=3) as fake:
        counts = run(
            passages_file, tmp_path / "q.csv", fake, "llm.timeout=0.5", "llm.backoff_retries=3"
        )
    assert counts["postprocess"]["kept"] == 6
    assert counts["usage"]["retries"] == 4  # 2 + 1 + 1 (the timed-out one)


def test_retries_give_up_and_rerun_sends_only_what_is_missing(passages_file, tmp_path):
    out = tmp_path / "q.csv"
    with FakeLLM({"T3": ["500"] * 3}) as fake:
        first = run(passages_file, out, fake, "llm.backoff_retries=2")
        assert first["replies"]["unanswered"] == 1
        assert first["replies"]["rejected_by_reason"] == {"request_failed": 1}
        before = len(fake.requests)
        second = run(passages_file, out, fake, "llm.backoff_retries=2")
    assert len(fake.requests) - before == 1  # only T3 again
    assert second["usage"]["cache_hits"] == 5
    assert second["postprocess"]["kept"] == 6
    assert max(fake.answered.values()) == 1  # no key was ever answered twice


def test_cache_hit_and_template_edit_invalidates_only_what_it_renders(passages_file, tmp_path):
    out = tmp_path / "q.csv"
    with FakeLLM({"T0": ["malformed"]}) as fake:
        run(passages_file, out, fake)
        assert len(fake.requests) == 7  # 6 + the re-ask of T0
        again = run(passages_file, out, fake)
        assert len(fake.requests) == 7 and again["usage"]["cache_hits"] == 7
        templates = Path("configs/gen_prompts.yaml").read_text()
        edited = tmp_path / "prompts.yaml"
        edited.write_text(templates.replace("That reply was not valid", "Invalid reply"))
        fake.script["T0"] = ["valid", "malformed"]  # T0's next request (re-ask) fails again
        changed = run(passages_file, out, fake, f"gen.prompts={edited}")
    assert len(fake.requests) == 8  # only the re-ask message changed
    assert changed["usage"]["answered"] == 1


def test_max_requests_stops_cleanly_and_resume_completes(passages_file, tmp_path):
    out = tmp_path / "q.csv"
    with FakeLLM() as fake:
        stopped = run(passages_file, out, fake, "llm.concurrency=1", "gen.max_requests=2")
        assert stopped["stopped"].startswith("max_requests=2")
        assert len(read_questions(out)) == 2 and len(fake.requests) == 2
        run(passages_file, out, fake)
    assert len(fake.requests) == 6 and max(fake.answered.values()) == 1
    assert len(read_questions(out)) == 6


def test_max_cost_stops_once_spent(passages_file, tmp_path):
    with FakeLLM() as fake:
        counts = run(
            passages_file,
            tmp_path / "q.csv",
            fake,
            "llm.concurrency=1",
            "llm.price_input_per_1k=1.0",
            "gen.max_cost=0.0001",
        )
    assert counts["stopped"].startswith("max_cost") and counts["usage"]["answered"] == 1
    assert counts["usage"]["cost"] > 0


def test_json_schema_refused_falls_back_to_json_object(passages_file, tmp_path):
    with FakeLLM(reject_json_schema=True) as fake:
        counts = run(passages_file, tmp_path / "q.csv", fake)
    assert counts["postprocess"]["kept"] == 6
    assert counts["usage"]["format_downgrades"][0].startswith("json_schema->json_object")
    answered = [
        r for r in fake.requests if r.get("response_format", {}).get("type") != "json_schema"
    ]
    assert len(answered) == 6


def test_concurrency_limit_is_respected_and_used(passages_file, tmp_path):
    """Counted at the server, not timed: 1 means one at a time, 6 overlaps requests."""
    peak = {}
    for concurrency in (1, 6):
        with FakeLLM(latency=0.3) as fake:
            run(passages_file, tmp_path / f"q{concurrency}.csv", fake,
                f"llm.concurrency={concurrency}")  # fmt: skip
            peak[concurrency] = fake.max_in_flight
    assert peak[1] == 1
    assert 2 <= peak[6] <= 6  # 6 passages, 6 slots: they overlap, never more than the limit


def test_batch_mode_folds_results_into_the_cache(passages_file, tmp_path):
    out = tmp_path / "q.csv"
    with FakeLLM({"T1": ["malformed"]}, batch_polls=2) as fake:
        counts = run(passages_file, out, fake, "gen.batch_poll_seconds=0.05", batch=True)
        assert len(fake.batches) == 1
        assert counts["usage"]["batched"] == 6  # every first request went through the batch
        assert counts["usage"]["cache_hits"] == 6  # ...and the online pass found it cached
        assert counts["usage"]["answered"] == 7  # + T1's re-ask, sent online
        assert counts["postprocess"]["kept"] == 6
        run(passages_file, out, fake, "gen.batch_poll_seconds=0.05", batch=True)
        assert len(fake.batches) == 1  # nothing left to submit


# --- bad input ---------------------------------------------------------------------


def test_missing_key_variable(passages_file, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeLLM() as fake, pytest.raises(SciqaError, match="OPENAI_API_KEY"):
        run(passages_file, tmp_path / "q.csv", fake)


def test_unreachable_base_url_is_named(passages_file, tmp_path):
    with FakeLLM() as fake:
        url = fake.base_url
    cfg = load_config(
        None,
        [
            f"llm.base_url={url}",
            "llm.model=m",
            "llm.sdk_retries=0",
            "llm.backoff_retries=1",
            "llm.backoff_base=0.01",
            "gen.dedup=false",
            "gen.answerability_filter=false",
            "gen.too_easy_filter=false",
        ],
    )
    with pytest.raises(SciqaError, match=f"cannot reach llm.base_url {url}"):
        cfg.gen.n = 2
        run_gen(passages_file, tmp_path / "q.csv", cfg)


def test_passages_without_text_and_n_too_large(tmp_path):
    bad = tmp_path / "bad.csv"
    passages().drop(columns="text").to_csv(bad, index=False)
    with FakeLLM() as fake:
        with pytest.raises(SciqaError, match=r"bad.csv: missing column\(s\) 'text'"):
            run(bad, tmp_path / "q.csv", fake)
        good = tmp_path / "good.parquet"
        passages().to_parquet(good)
        with pytest.raises(SciqaError, match="--n 7 passages asked for but only 6 qualify"):
            run(good, tmp_path / "q.csv", fake, n=7)
        assert fake.requests == []


def test_science_filter_keeps_keyword_passages(tmp_path):
    frame = passages(4)
    frame.loc[0, "text"] = "A football club founded in 1900. " + "word " * 45
    path = tmp_path / "p.parquet"
    frame.to_parquet(path)
    with FakeLLM() as fake, pytest.raises(SciqaError, match=r"3 pass gen\.science_filter=keywords"):
        run(path, tmp_path / "q.csv", fake, n=4)


# --- post-processing ---------------------------------------------------------------


def questions(n: int) -> pd.DataFrame:
    rows = [
        {
            "id": f"q{i}",
            "prompt": f"Question {i} about topic{i}?",
            "A": f"right{i}",
            "B": f"b{i}",
            "C": f"c{i}",
            "D": f"d{i}",
            "E": f"e{i}",
            "answer": "A",
            "context": f"ctx {i}",
            "source": "gen:x",
            "source_id": f"p{i}",
        }
        for i in range(n)
    ]
    return pd.DataFrame(rows)


def test_balance_letters_keeps_each_correct_option():
    balanced = balance_letters(questions(10), seed=0)
    assert letter_counts(balanced) == {letter: 2 for letter in LETTERS}
    for i, row in balanced.iterrows():
        assert row[row["answer"]] == f"right{i}"
        assert sorted(row[LETTERS]) == sorted(questions(10).loc[i, LETTERS])


def test_exact_and_near_duplicates_are_dropped():
    frame = questions(4)
    frame.loc[1, "prompt"] = "QUESTION 0 about topic0 ?"  # exact after normalising
    frame.loc[2, "prompt"] = "Question 0 about topic0? indeed"
    frame.loc[2, "A"] = "right0"
    kept, drops = remove_duplicates(frame, HashEncoder(), threshold=0.8)
    assert list(kept["id"]) == ["q0", "q3"]
    assert [d["reason"] for d in drops] == ["duplicate_exact", "duplicate_near"]


def test_leakage_against_excluded_file():
    frame = questions(3)
    evaluation = questions(1).assign(id="kaggle-7", prompt="question 2 about topic2")
    kept, drops = remove_leaks(frame, {"test.csv": evaluation}, HashEncoder(), 0.99)
    assert list(kept["id"]) == ["q0", "q1"]
    assert drops[0]["reason"] == "leak" and "test.csv id=kaggle-7" in drops[0]["detail"]


def test_answerability_and_too_easy_filters():
    frame = questions(3)  # answer A everywhere
    with_ctx = [[0.9, 0.1, 0, 0, 0], [0.1, 0.9, 0, 0, 0], [0.6, 0.4, 0, 0, 0]]
    without = [[0.95, 0.05, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0.3, 0.7, 0, 0, 0]]
    scorer = FixedScorer(with_ctx, without)
    kept, drops = filter_unanswerable(frame, scorer)
    assert list(kept["id"]) == ["q0", "q2"] and drops[0]["id"] == "q1"
    scorer = FixedScorer(with_ctx, [without[0], without[2]])
    kept, drops = filter_too_easy(kept, scorer, confidence=0.6)
    assert list(kept["id"]) == ["q2"] and drops[0]["reason"] == "too_easy"


def test_filters_in_the_pipeline_are_counted(passages_file, tmp_path):
    # With the passage, every other question's pick (B) misses the label (A); without
    # it, the first remaining one is answered with p = 0.9 (too easy).
    with_ctx = np.tile([[0.2, 0.8, 0, 0, 0], [0.9, 0.1, 0, 0, 0]], (3, 1))
    without = np.array([[0.9, 0.1, 0, 0, 0]] + [[0.3, 0.7, 0, 0, 0]] * 2)
    scorer = FixedScorer(with_ctx, without)
    with FakeLLM() as fake:
        counts = run(
            passages_file,
            tmp_path / "q.csv",
            fake,
            "gen.answerability_filter=true",
            "gen.too_easy_filter=true",
            encoder=HashEncoder(),  # not MiniLM: keeps the test fast
            scorer=scorer,
        )
    post = counts["postprocess"]
    assert post["dropped_by_reason"] == {"unanswerable": 3, "too_easy": 1}
    assert post["kept"] == 2 and len(read_questions(tmp_path / "q.csv")) == 2


def test_cache_rows_survive_reopen(tmp_path):
    cache = ReplyCache(tmp_path / "c.sqlite")
    cache.put("k", {"a": 1}, {"choices": [], "usage": {"prompt_tokens": 3}})
    cache.close()
    again = ReplyCache(tmp_path / "c.sqlite")
    assert again.get("k") == {"choices": [], "usage": {"prompt_tokens": 3}}
    assert again.has(["k", "other"]) == {"k"} and len(again) == 1


def test_fake_server_keys_match_request_bodies():
    assert body_key({"a": 1, "b": 2}) == body_key({"b": 2, "a": 1})


@pytest.mark.assets
def test_embedded_server_converts_the_gguf_once_and_answers():
    """The packaged SmolLM2 GGUF -> safetensors folder -> `transformers serve` -> a reply.

    Uses the shared cache dir (as `sciqa gen` does): the ~20 s conversion runs only on the
    first run on a machine, keeping the suite fast afterwards.
    """
    import openai

    from data_gen.engine.transformers_serve import serve_transformers
    from sciqa.assets.llm import prepare_model

    folder = prepare_model("default", None)
    assert (Path(folder) / "config.json").is_file()
    assert prepare_model("default", None) == folder  # cached: no second conversion
    with serve_transformers(folder, startup_timeout=300) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="local", timeout=300)
        reply = client.chat.completions.create(
            model=folder, messages=[{"role": "user", "content": "Say hi."}], max_tokens=3
        )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens <= 3


@pytest.mark.assets
def test_trained_model_directory_scores_options(tmp_path):
    """gen.scorer = a `sciqa train`-style checkpoint folder (tiny random BERT here)."""
    from transformers import AutoTokenizer, BertConfig, BertForMultipleChoice

    from data_gen.scorers import TrainedScorer
    from sciqa.assets.registry import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default", "embedding").name_or_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertForMultipleChoice(config).save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    probs = TrainedScorer(str(tmp_path / "ckpt")).probabilities(questions(3), use_context=True)
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(SciqaError, match="not a model directory"):
        TrainedScorer(str(tmp_path / "missing"))


def test_several_questions_per_passage_are_separate_requests(passages_file, tmp_path):
    with FakeLLM() as fake:
        counts = run(passages_file, tmp_path / "q.csv", fake, "gen.questions_per_passage=2", n=3)
    assert counts["postprocess"]["kept"] == 6 and len(fake.answered) == 6
    ids = sorted(read_questions(tmp_path / "q.csv")["id"])
    assert ids[:2] == ["gen-p0-0", "gen-p0-1"]


def test_embedding_science_filter_uses_seed_questions(tmp_path):
    frame = passages(4)
    frame.loc[0, "text"] = "Football match results " * 20
    path = tmp_path / "p.parquet"
    frame.to_parquet(path)
    seeds = '["Passage about chemical energy in cells, word by word"]'
    with FakeLLM() as fake:
        counts = run(
            path,
            tmp_path / "q.csv",
            fake,
            "gen.science_filter=embedding",
            f"gen.science_seed_questions={seeds}",
            "gen.science_min_similarity=0.3",
            n=3,
            encoder=HashEncoder(),
        )
    assert counts["selection"]["science"] == 3
    assert "p0" not in set(read_questions(tmp_path / "q.csv")["source_id"])
