import pandas as pd
import pytest

from sciqa.scoring.mc_encoding import encode_questions


class WordTokenizer:
    """Whitespace tokenizer with the pair/truncation behaviour of a HF tokenizer."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def word_ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab) + 3) for w in text.split()]

    def __call__(self, firsts, seconds, truncation=False, max_length=None):
        out = {"input_ids": [], "attention_mask": []}
        for first, second in zip(firsts, seconds, strict=True):
            a, b = self.word_ids(first), self.word_ids(second)
            if truncation == "only_first":
                a = a[: max(0, max_length - len(b) - 3)]
            elif truncation == "longest_first":
                while len(a) + len(b) + 3 > max_length:
                    if len(a) >= len(b):
                        a = a[:-1]
                    else:
                        b = b[:-1]
            ids = [1, *a, 2, *b, 2]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
        return out


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "id": ["q1", "q2"],
            "prompt": ["what is red", "what is blue"],
            "A": ["a colour word", "sky"],
            "B": ["fruit", "sea"],
            "C": ["planet", "ink"],
            "answer": ["A", "C"],
            "context": ["ctx " * 50, ""],
        }
    )


def test_truncation_cuts_context_never_question_or_option(frame):
    tok = WordTokenizer()
    enc = encode_questions(tok, frame, max_length=12)
    assert enc.n_options == 3 and enc.overlong == 0
    first = enc.features[0]
    assert first["labels"] == 0 and enc.features[1]["labels"] == 2
    question = tok.word_ids("what is red")
    for ids, option in zip(first["input_ids"], ["a colour word", "fruit", "planet"], strict=True):
        assert len(ids) <= 12
        assert ids[1:4] == question
        assert ids[-1 - len(option.split()) : -1] == tok.word_ids(option)


def test_without_context_flag_ignores_context(frame):
    enc = encode_questions(WordTokenizer(), frame, max_length=64, use_context=False)
    assert enc.lengths[0] == len(["what", "is", "red"]) + 3 + 3  # + "a colour word"


def test_overlong_question_is_counted_and_still_fits(frame):
    frame.loc[0, "prompt"] = "very " * 30
    enc = encode_questions(WordTokenizer(), frame, max_length=12)
    assert enc.overlong == 1 and enc.overlong_rows == [0]
    assert all(len(ids) <= 12 for f in enc.features for ids in f["input_ids"])
