"""Causal-LM option scoring (sciqa.scoring: llm_prompts, llm_scoring) on a tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sciqa.assets.llm import load_causal_lm, load_causal_tokenizer  # noqa: E402
from sciqa.config import load_config  # noqa: E402
from sciqa.scoring.llm_prompts import LLMPromptError, PromptSpec, encode_for_llm  # noqa: E402
from sciqa.scoring.llm_scoring import ScoreHead, full_features, score_rows  # noqa: E402
from tests.builders import build_tiny_llama  # noqa: E402

FRAME = pd.DataFrame(
    {
        "id": ["q1", "q2", "q3"],
        "prompt": ["What is water made of?", "Which planet is red?", "Why is the sky blue?"],
        "A": ["hydrogen and oxygen", "Mars", "scattering of light"],
        "B": ["salt", "Venus is the planet", "the sea"],
        "C": ["iron", "Earth", "smoke"],
        "D": ["gold dust", "Pluto", "paint on the sky"],
        "answer": ["A", "A", "A"],
        "context": [
            "Water is a molecule of hydrogen and oxygen atoms. " * 6,
            "",
            "Rayleigh scattering of sunlight makes the sky blue.",
        ],
    }
)
TEXTS = FRAME[["prompt", "A", "B", "C", "D", "context"]].to_numpy().ravel().tolist()


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> tuple[Path, object, object]:
    path = build_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny", TEXTS)
    return path, load_causal_tokenizer(str(path)), load_causal_lm(str(path)).eval()


def _spec(tokenizer, *overrides: str) -> PromptSpec:
    return PromptSpec.from_config(load_config(None, list(overrides)).causal_lm, tokenizer, "tiny")


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """Unpadded, uncached reference: log-softmax at every position of one sequence."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


@pytest.mark.parametrize("mode", ["cloze", "letter", "yes_no"])
@pytest.mark.parametrize("chat", ["on", "off"])
def test_prefix_cache_equals_full_sequences(llm, mode, chat):
    _, tok, model = llm
    spec = _spec(tok, f"causal_lm.mode={mode}", f"causal_lm.chat_template={chat}")
    enc = encode_for_llm(tok, FRAME, spec)
    head = ScoreHead.of(enc)
    cached = score_rows(model, enc, [0, 1, 2], head, tok.pad_token_id, prefix_cache=True)
    full = score_rows(model, enc, [0, 1, 2], head, tok.pad_token_id, prefix_cache=False)
    alone = torch.cat(
        [score_rows(model, enc, [i], head, tok.pad_token_id, prefix_cache=True) for i in range(3)]
    )
    assert cached.shape == (3, 4)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached, alone, atol=1e-5, rtol=1e-5)  # padding changes nothing


def test_cloze_is_the_mean_log_prob_of_the_option_tokens(llm):
    _, tok, model = llm
    spec = _spec(tok, "causal_lm.use_context=false")
    enc = encode_for_llm(tok, FRAME, spec)
    assert tok.decode(enc.prefixes[1]) == "Question: Which planet is red?\nAnswer:"
    assert tok.decode(enc.suffixes[1][1]) == " Venus is the planet"
    scores = score_rows(model, enc, [1], ScoreHead.of(enc), tok.pad_token_id)[0]
    for k in range(4):
        prefix, suffix = enc.prefixes[1], enc.suffixes[1][k]
        lp = _logprobs(model, prefix + suffix)
        expected = sum(lp[len(prefix) - 1 + j, t].item() for j, t in enumerate(suffix))
        assert scores[k].item() == pytest.approx(expected / len(suffix), abs=1e-5)


def test_cloze_normalisations(llm):
    _, tok, model = llm
    by = {}
    for norm in ("mean", "sum", "chars"):
        enc = encode_for_llm(tok, FRAME, _spec(tok, f"causal_lm.normalise={norm}"))
        by[norm] = score_rows(model, enc, [0, 1, 2], ScoreHead.of(enc), tok.pad_token_id)
    n_tokens = torch.tensor([[len(s) for s in sufs] for sufs in enc.suffixes], dtype=torch.float)
    n_chars = torch.tensor(FRAME[list("ABCD")].map(len).to_numpy(), dtype=torch.float)
    torch.testing.assert_close(by["mean"] * n_tokens, by["sum"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(by["chars"] * n_chars, by["sum"], atol=1e-4, rtol=1e-5)


def test_letter_reads_the_letter_logits_after_the_listed_options(llm):
    _, tok, model = llm
    spec = _spec(tok, "causal_lm.mode=letter", "causal_lm.use_context=false")
    assert spec.chat  # auto: the tiny tokenizer has a chat template
    enc = encode_for_llm(tok, FRAME, spec)
    text = tok.decode(enc.prefixes[1])
    assert text == (
        "<|im_start|>user\nQuestion: Which planet is red?\nA. Mars\nB. Venus is the planet\n"
        "C. Earth\nD. Pluto\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.convert_ids_to_tokens(enc.answer_ids) == list("ABCD")  # no space after "\n"
    scores = score_rows(model, enc, [1], ScoreHead.of(enc), tok.pad_token_id)[0]
    last = _logprobs(model, enc.prefixes[1])[-1]
    expected = last[enc.answer_ids] - torch.logsumexp(last, -1)  # logits up to a constant
    torch.testing.assert_close(scores - scores[0], expected - expected[0], atol=1e-5, rtol=0)


def test_yes_no_is_yes_minus_no_after_each_option(llm):
    _, tok, model = llm
    spec = _spec(tok, "causal_lm.mode=yes_no", "causal_lm.chat_template=off")
    enc = encode_for_llm(tok, FRAME, spec)
    full = tok.decode(enc.prefixes[0] + enc.suffixes[0][2])
    assert full.endswith(
        "Proposed answer: iron\nIs the proposed answer correct? Answer yes or no.\nAnswer:"
    )
    assert {tok.decode([i]).strip().lower() for i in enc.yes_ids} == {"yes"}
    scores = score_rows(model, enc, [0], ScoreHead.of(enc), tok.pad_token_id)[0]
    lp = _logprobs(model, enc.prefixes[0] + enc.suffixes[0][2])[-1]
    expected = torch.logsumexp(lp[enc.yes_ids], -1) - torch.logsumexp(lp[enc.no_ids], -1)
    assert scores[2].item() == pytest.approx(expected.item(), abs=1e-5)


def test_only_the_context_is_cut_and_counted(llm):
    _, tok, _ = llm
    long = _spec(tok, "causal_lm.max_length=2000")
    short = _spec(tok, "causal_lm.max_length=60")
    full, cut = encode_for_llm(tok, FRAME, long), encode_for_llm(tok, FRAME, short)
    assert full.truncated == 0 and cut.truncated == 1  # only q1's context is that long
    assert cut.cut_rows == [0] and cut.overlong_rows == []
    assert max(cut.lengths) <= 60 < full.lengths[0]
    text = tok.decode(cut.prefixes[0])
    assert text.startswith("Context: Water is") and text.endswith(
        "Question: What is water made of?\nAnswer:"
    )
    assert cut.suffixes == full.suffixes  # options whole
    assert cut.prefixes[1:] == full.prefixes[1:]


def test_question_longer_than_the_window_is_kept_and_counted(llm):
    _, tok, _ = llm
    enc = encode_for_llm(tok, FRAME, _spec(tok, "causal_lm.max_length=16"))
    assert enc.overlong == 3 and enc.overlong_rows == [0, 1, 2]
    assert "Question: Which planet is red?" in tok.decode(enc.prefixes[1])


def test_split_letter_token_is_refused(tmp_path):
    path = build_tiny_llama(tmp_path / "bytes", [], vocab=259)  # bytes only: " A" = 2 tokens
    tok = load_causal_tokenizer(str(path))
    spec = _spec(tok, "causal_lm.mode=letter", "causal_lm.chat_template=off")
    with pytest.raises(LLMPromptError, match=r"splits ' A' into 2 tokens"):
        encode_for_llm(tok, FRAME, spec, name="bytes")


def test_chat_template_required_but_missing(tmp_path):
    path = build_tiny_llama(tmp_path / "nochat", TEXTS, chat=False)
    tok = load_causal_tokenizer(str(path))
    with pytest.raises(LLMPromptError, match="no chat template"):
        _spec(tok, "causal_lm.mode=letter", "causal_lm.chat_template=on")
    assert not _spec(tok, "causal_lm.mode=letter").chat  # auto falls back to plain text


def test_prompt_spec_round_trips_through_meta(llm):
    _, tok, _ = llm
    spec = _spec(tok, "causal_lm.mode=yes_no", "causal_lm.max_length=99")
    assert PromptSpec.from_meta(spec.to_meta()) == spec


def test_labels_follow_the_answer_letters(llm):
    _, tok, _ = llm
    frame = FRAME.assign(answer=["A", "C", "D"])
    assert encode_for_llm(tok, frame, _spec(tok)).labels == [0, 2, 3]
    assert encode_for_llm(tok, frame.drop(columns="answer"), _spec(tok)).labels is None
    assert np.isfinite(np.array(encode_for_llm(tok, frame, _spec(tok)).norms)).all()


def test_pmi_subtracts_the_log_prob_after_the_bare_answer_cue(llm):
    _, tok, model = llm
    enc = encode_for_llm(tok, FRAME, _spec(tok, "causal_lm.normalise=pmi"))
    assert tok.decode(enc.uncond_prefix) == "Answer:"
    scores = score_rows(model, enc, [0, 1], ScoreHead.of(enc), tok.pad_token_id)
    for i in (0, 1):
        for k in range(4):
            cond = _logprobs(model, enc.prefixes[i] + enc.suffixes[i][k])
            bare = _logprobs(model, enc.uncond_prefix + enc.uncond_suffixes[i][k])
            expected = sum(
                cond[len(enc.prefixes[i]) - 1 + j, t].item()
                for j, t in enumerate(enc.suffixes[i][k])
            ) - sum(
                bare[len(enc.uncond_prefix) - 1 + j, t].item()
                for j, t in enumerate(enc.uncond_suffixes[i][k])
            )
            assert scores[i, k].item() == pytest.approx(expected, abs=1e-4)
    with pytest.raises(LLMPromptError, match="zero-shot only"):
        full_features(enc)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["causal_lm.cloze_template=Q: {question} Answer:"], "bad field 'question'"),
        (
            ["causal_lm.mode=yes_no", "causal_lm.yes_no_template=Q: {prompt} yes?"],
            "must contain {option}",
        ),
        (
            ["causal_lm.mode=letter", "causal_lm.letter_template=Q: {prompt}"],
            "must contain {options}",
        ),
    ],
)
def test_bad_templates_are_refused(llm, sets, message):
    _, tok, _ = llm
    with pytest.raises(LLMPromptError, match=message.replace("{", r"\{").replace("}", r"\}")):
        encode_for_llm(tok, FRAME, _spec(tok, *sets))
