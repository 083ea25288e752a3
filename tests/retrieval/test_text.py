"""Retrieval pieces that need no model: corpus reading, chunking, fusion, context."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest

from retrieval.chunking import chunk_article, chunk_corpus, split_sentences, windows
from retrieval.context import build_context, queries
from retrieval.corpus import read_corpus
from retrieval.errors import CorpusError, RetrievalInputError
from retrieval.fusion import fuse


def _sentences(n: int, words: int = 7) -> list[str]:
    return [
        " ".join(f"s{i}w{j}" for j in range(words - 1)).capitalize() + f" end{i}." for i in range(n)
    ]


# --- chunking -------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_words", "overlap"), [(20, 0), (20, 7), (30, 14), (50, 10)])
def test_windows_respect_size_boundaries_and_overlap(chunk_words: int, overlap: int) -> None:
    sentences = _sentences(25)
    chunks = windows(sentences, chunk_words, overlap)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk.split()) <= chunk_words
        assert chunk.endswith(".")  # ends on a sentence boundary
        assert split_sentences(chunk)[0] in sentences  # starts on one
    for before, after in itertools.pairwise(chunks):
        shared = [s for s in split_sentences(after) if s in split_sentences(before)]
        assert sum(len(s.split()) for s in shared) <= overlap
        if overlap >= 7:  # room for at least one whole sentence: overlap is used
            assert shared, (before, after)
            assert before.endswith(shared[-1])
    # every sentence is in some chunk, in order
    covered = [s for c in chunks for s in split_sentences(c)]
    assert list(dict.fromkeys(covered)) == sentences


def test_long_sentence_is_cut_into_word_runs() -> None:
    text = " ".join(f"w{i}" for i in range(45)) + "."
    chunks = chunk_article(text, chunk_words=20, overlap=5)
    assert [len(c.split()) for c in chunks] == [20, 20, 5]
    assert " ".join(chunks).split() == text.split()


def test_short_article_is_one_unchanged_passage() -> None:
    text = "Photosynthesis makes sugar. It needs light."
    assert chunk_article(text, chunk_words=200, overlap=50) == [text]


def test_sentence_split_keeps_numbers_and_abbreviations() -> None:
    text = "Water boils at 100 °C at 1.0 atm. The speed is 3.0 x 10⁸ m/s, e.g. in vacuum. Next"
    assert split_sentences(text) == [
        "Water boils at 100 °C at 1.0 atm.",
        "The speed is 3.0 x 10⁸ m/s, e.g. in vacuum.",
        "Next",
    ]


def test_passage_ids_are_stable_and_unique() -> None:
    articles = pd.DataFrame(
        {
            "article_id": ["a", "b"],
            "title": ["A", "B"],
            "text": [" ".join(_sentences(30)), "Short one."],
        }
    )
    first = chunk_corpus(articles, 40, 10)
    again = chunk_corpus(articles.copy(), 40, 10)
    pd.testing.assert_frame_equal(first, again)
    assert first["passage_id"].is_unique
    assert list(first.columns) == ["passage_id", "title", "text", "article_id", "chunk"]
    a = first[first.article_id == "a"]
    assert a["chunk"].tolist() == list(range(len(a)))
    assert a["passage_id"].tolist() == [f"a#{i}" for i in range(len(a))]
    assert (first["title"] == first["article_id"].str.upper()).all()  # title kept per chunk


def test_overlap_not_smaller_than_window_is_a_config_error() -> None:
    articles = pd.DataFrame({"article_id": ["a"], "title": ["A"], "text": ["x y z."]})
    with pytest.raises(RetrievalInputError, match=r"retrieval\.chunk_overlap"):
        chunk_corpus(articles, 10, 10)


# --- corpus ---------------------------------------------------------------------------


def _write_corpus(folder: Path) -> None:
    folder.mkdir()
    rows = [{"id": "1", "title": "Atom", "text": "An  atom\n is small.\t"}]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pd.DataFrame({"title": ["Cell", "Empty"], "text": ["A cell is alive.", "   "]}).to_csv(
        folder / "b.csv", index=False
    )
    pd.DataFrame({"title": ["Star"], "text": ["A star shines at 5,778 K."]}).to_parquet(
        folder / "c.parquet"
    )
    sub = folder / "AA"
    sub.mkdir()
    (sub / "wiki_00").write_text(json.dumps({"id": "9", "title": "Moon", "text": "The Moon."}))
    (folder / "notes.txt").write_text("ignored")


def test_folder_corpus_reads_every_format_normalises_and_drops_empty(tmp_path: Path) -> None:
    _write_corpus(tmp_path / "corpus")
    articles, sources = read_corpus(tmp_path / "corpus")
    assert [s.path.name for s in sources] == ["wiki_00", "a.jsonl", "b.csv", "c.parquet"]
    assert articles["title"].tolist() == ["Moon", "Atom", "Cell", "Star"]
    assert articles.loc[1, "text"] == "An atom is small."
    assert articles.loc[3, "text"] == "A star shines at 5,778 K."
    assert articles.loc[1, "article_id"] == "1"
    again, _ = read_corpus(tmp_path / "corpus")
    assert articles["article_id"].tolist() == again["article_id"].tolist()


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("title,body\nA,text\n", "c.csv", "missing column 'text'"),
        ("title,text\nA,\nB,  \n", "c.csv", "no usable text"),
        ('{"title": "A", "text": \n', "c.jsonl", "cannot be read as jsonl"),
        ("", "c.csv", "file is empty"),
    ],
)
def test_bad_corpus_files_fail_with_one_line(
    tmp_path: Path, content: str, name: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(Exception, match=message) as info:
        read_corpus(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_corpus_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no corpus files"):
        read_corpus(tmp_path / "empty")


# --- fusion and context ---------------------------------------------------------------


def _reference_rrf(lists: dict, weights: dict, k: int) -> list[int]:
    scores: dict[int, float] = {}
    for name, rows in lists.items():
        for rank, row in enumerate(rows, start=1):
            scores[row] = scores.get(row, 0.0) + weights[name] / (k + rank)
    return sorted(scores, key=lambda r: -scores[r])


@pytest.mark.parametrize(
    ("dense", "bm25", "weights"),
    [
        ([1, 2, 3], [3, 2, 1], {"dense": 1.0, "bm25": 1.0}),
        ([1, 2, 3, 4], [5, 6, 1], {"dense": 1.0, "bm25": 3.0}),
        ([9, 8], [], {"dense": 1.0, "bm25": 1.0}),
    ],
)
def test_fusion_matches_reference(dense: list[int], bm25: list[int], weights: dict) -> None:
    ranked = {
        "dense": (dense, [1.0] * len(dense)),
        "bm25": (bm25, [1.0] * len(bm25)),
    }
    hits = fuse(ranked, weights, rrf_k=60)
    assert [h.row for h in hits] == _reference_rrf({"dense": dense, "bm25": bm25}, weights, 60)


def test_fusion_skips_missing_hits_and_keeps_raw_scores() -> None:
    hits = fuse({"dense": ([4, -1], [0.5, 0.1]), "bm25": ([4], [float("nan")])}, {}, 60)
    assert [(h.row, h.scores) for h in hits] == [(4, {"dense": 0.5})]


def test_context_is_best_first_and_within_budget() -> None:
    passages = ["first passage here", "second one", "third passage words"]
    assert (
        build_context(passages, 1000, len)
        == "first passage here\n\nsecond one\n\nthird passage words"
    )
    for budget in range(1, 60):
        context = build_context(passages, budget, len)
        assert len(context) <= budget
        assert "first passage here".startswith(context[:18]) or not context
    assert build_context(passages, 30, len) == "first passage here\n\nsecond one"


def test_queries_use_prompt_and_every_option(questions: pd.DataFrame) -> None:
    three = questions.drop(columns=["D", "E", "answer"])
    made = queries(three, "{prompt} || {options}")
    assert made[0] == "Which particle mediates the electromagnetic force? || Photon Gluon W boson"
    with pytest.raises(RetrievalInputError, match=r"retrieval\.query_template"):
        queries(three, "{question}")
