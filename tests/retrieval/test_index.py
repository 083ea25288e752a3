"""``sciqa index`` / ``sciqa retrieve`` on a tiny corpus built here (packaged MiniLM)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from retrieval import dense, index_dir, lexical
from retrieval.commands import run_index, run_retrieve
from retrieval.errors import IndexDirError
from retrieval.search import Retriever
from sciqa.cli import app
from sciqa.config import SciqaConfig
from tests.builders import (
    RETRIEVAL_SMALL,
    WIKI_ARTICLES,
    WIKI_QUESTIONS,
    make_config,
    make_cross_encoder,
    wiki_questions,
)

pytestmark = [pytest.mark.assets, pytest.mark.usefixtures("in_tmp")]


def _open(folder: Path, config: SciqaConfig) -> Retriever:
    """The retriever ``sciqa retrieve`` opens with ``config``."""
    models = config.models
    return Retriever.open(
        folder, config.retrieval, embedding=models.embedding, reranker=models.reranker
    )


@pytest.fixture
def built(tmp_path: Path, corpus: Path) -> Path:
    out = tmp_path / "index"
    run_index(corpus, out, make_config(*RETRIEVAL_SMALL))
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        ["retrieval.bm25=false"],
        ["retrieval.dense=false"],
        [],  # hybrid
    ],
    ids=["dense", "bm25", "hybrid"],
)
def test_each_retriever_finds_the_known_passage(built: Path, overrides: list[str]) -> None:
    retriever = _open(built, make_config(*RETRIEVAL_SMALL, *overrides))
    hits = retriever.search(list(WIKI_QUESTIONS), top=2)
    titles = retriever.passages["title"].to_numpy()
    for (question, expected), question_hits in zip(WIKI_QUESTIONS.items(), hits, strict=True):
        assert titles[question_hits[0].row] == expected, question


def test_index_folder_has_the_contract_files_and_manifest(built: Path) -> None:
    passages = pd.read_parquet(built / "passages.parquet")
    assert list(passages.columns) == ["passage_id", "title", "text", "article_id", "chunk"]
    assert passages["passage_id"].is_unique
    assert len(passages) > len(WIKI_ARTICLES)  # chunk_words=20 splits the longer articles
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["format_version"] == index_dir.FORMAT_VERSION
    assert manifest["embedding"] == {
        "model": "default",
        "dim": 384,
        "query_prefix": "",
        "passage_prefix": "",
    }
    assert manifest["settings"]["chunk_words"] == 20
    assert manifest["faiss"] == {"factory": "Flat", "ntotal": len(passages)}
    assert manifest["counts"] == {"articles": len(WIKI_ARTICLES), "passages": len(passages)}
    assert manifest["inputs"][0]["sha256"].startswith("sha256:")
    assert (built / "config.yaml").is_file()


def test_rebuild_is_skipped_when_nothing_changed(built: Path, corpus: Path) -> None:
    before = (built / "dense.faiss").stat().st_mtime_ns
    assert "up to date" in run_index(corpus, built, make_config(*RETRIEVAL_SMALL))
    assert (built / "dense.faiss").stat().st_mtime_ns == before
    rebuilt = run_index(corpus, built, make_config(*RETRIEVAL_SMALL, "retrieval.chunk_words=30"))
    assert "up to date" not in rebuilt
    assert (built / "dense.faiss").stat().st_mtime_ns != before


def test_retrieve_fills_context_keeps_columns_and_writes_audit(built: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.csv"
    wiki_questions(3).to_csv(questions, index=False)
    out = tmp_path / "out" / "q_ctx.parquet"
    config = make_config(*RETRIEVAL_SMALL, f"runs_dir={tmp_path / 'runs'}")
    config.retrieval.k = 2
    run_retrieve(questions, built, out, config)
    frame = pd.read_parquet(out)
    assert list(frame.columns) == [*wiki_questions(3).columns, "context"]
    assert frame["id"].tolist() == ["q0", "q1", "q2", "q3"]
    assert frame.loc[0, "context"].startswith("Mitochondrion\n")
    assert all(0 < len(c) <= config.retrieval.context_budget for c in frame["context"])
    audit = pd.read_parquet(tmp_path / "out" / "q_ctx.retrieval.parquet")
    assert audit.columns[:6].tolist() == [
        "id",
        "rank",
        "passage_id",
        "dense_score",
        "bm25_score",
        "fused_score",
    ]
    assert audit.groupby("id")["rank"].apply(list).tolist() == [[1, 2]] * 4
    assert (tmp_path / "runs" / "retrieval" / "q_ctx" / "manifest.json").is_file()


def test_context_budget_in_backbone_tokens(built: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.csv"
    wiki_questions(2).to_csv(questions, index=False)
    out = tmp_path / "q_ctx.csv"
    config = make_config(
        *RETRIEVAL_SMALL, "retrieval.context_unit=tokens", "retrieval.context_budget=12"
    )
    config.retrieval.k = 3
    run_retrieve(questions, built, out, config)
    from transformers import AutoTokenizer

    from sciqa.assets.registry import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default", "backbone").name_or_path)
    contexts = pd.read_csv(out)["context"]
    assert all(len(tokenizer(c, add_special_tokens=False)["input_ids"]) <= 12 for c in contexts)
    assert all(len(c) > 10 for c in contexts)


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat"])
def test_shard_and_merge_equal_a_single_build(tmp_path: Path, corpus: Path, factory: str) -> None:
    config = make_config(
        *RETRIEVAL_SMALL, f"retrieval.faiss_factory={factory}", "retrieval.nprobe=2"
    )
    single = tmp_path / "single"
    run_index(corpus, single, config)
    sharded = tmp_path / "sharded"
    if factory != "Flat":
        with pytest.raises(IndexDirError, match="--train"):
            run_index(corpus, sharded, config, shard="0/3")
        run_index(corpus, sharded, config, train=True)
    for shard in (2, 0, 1):  # any order, as a job array would
        run_index(corpus, sharded, config, shard=f"{shard}/3")
    assert "merged 3 shards" in run_index(None, sharded, config, merge=True)
    pd.testing.assert_frame_equal(
        pd.read_parquet(single / "passages.parquet"), pd.read_parquet(sharded / "passages.parquet")
    )
    a = _open(single, config).search(list(WIKI_QUESTIONS), top=5)
    b = _open(sharded, config).search(list(WIKI_QUESTIONS), top=5)
    assert [[h.row for h in q] for q in a] == [[h.row for h in q] for q in b]
    if factory != "Flat":
        assert (sharded / "dense.ivfdata").is_file()
        moved = tmp_path / "moved"  # the merged index is found beside its .ivfdata
        shutil.move(sharded, moved)
        c = _open(moved, config).search(list(WIKI_QUESTIONS), top=5)
        assert [[h.row for h in q] for q in c] == [[h.row for h in q] for q in a]


def test_merge_refuses_missing_shard(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "idx"
    run_index(corpus, out, make_config(*RETRIEVAL_SMALL), shard="0/2")
    with pytest.raises(IndexDirError, match="shard 1/2 is missing"):
        run_index(None, out, make_config(*RETRIEVAL_SMALL), merge=True)


def test_mmap_load_gives_the_same_results(built: Path) -> None:
    mapped = _open(built, make_config(*RETRIEVAL_SMALL, "retrieval.mmap=true"))
    loaded = _open(built, make_config(*RETRIEVAL_SMALL, "retrieval.mmap=false"))
    assert isinstance(mapped.bm25.scores["data"], np.memmap)
    assert not isinstance(loaded.bm25.scores["data"], np.memmap)
    a = mapped.search(list(WIKI_QUESTIONS), top=4)
    b = loaded.search(list(WIKI_QUESTIONS), top=4)
    assert [[(h.row, round(h.fused, 9)) for h in q] for q in a] == [
        [(h.row, round(h.fused, 9)) for h in q] for q in b
    ]
    assert dense.read(built / "dense.faiss", mmap=True).ntotal == len(mapped.passages)


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "dim":
            manifest["embedding"]["dim"] = value
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def test_index_checks(built: Path, tmp_path: Path) -> None:
    with pytest.raises(
        IndexDirError, match=r"models.embedding = 'default'.*--set models.embedding"
    ):
        _open(
            built,
            make_config(*RETRIEVAL_SMALL, f"models.embedding={tmp_path}"),
        )
    _edit_manifest(built, dim=768)
    with pytest.raises(IndexDirError, match=r"768-d embeddings.*384-d; rebuild"):
        _open(built, make_config(*RETRIEVAL_SMALL))
    _edit_manifest(built, dim=384, format_version=99)
    with pytest.raises(IndexDirError, match=r"format version 99.*rebuild it"):
        _open(built, make_config(*RETRIEVAL_SMALL))
    _edit_manifest(built, format_version=index_dir.FORMAT_VERSION)
    (built / "dense.faiss").unlink()
    with pytest.raises(IndexDirError, match=r"dense.faiss: missing from the index"):
        _open(built, make_config(*RETRIEVAL_SMALL))


def test_interrupted_first_build_leaves_nothing_that_loads(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lexical, "build", crash)
    out = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        run_index(corpus, out, make_config(*RETRIEVAL_SMALL))
    with pytest.raises(IndexDirError, match="no such index folder"):
        _open(out, make_config(*RETRIEVAL_SMALL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wiki.jsonl"]  # no .new.partial


def test_reranker_reorders_the_fused_candidates(built: Path, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    words = sorted({w.lower().strip(".,'") for t in WIKI_ARTICLES.values() for w in t.split()})
    folder = make_cross_encoder(tmp_path / "tiny-cross-encoder", words)

    config = make_config(
        *RETRIEVAL_SMALL, f"models.reranker={folder}", "retrieval.rerank_candidates=4"
    )
    retriever = _open(built, config)
    hits = retriever.search(list(WIKI_QUESTIONS), top=6)
    expected = CrossEncoder(str(folder)).predict(
        [
            (next(iter(WIKI_QUESTIONS)), t)
            for t in retriever.texts([[h.row for h in hits[0][:4]]])[0]
        ]
    )
    head = hits[0][:4]
    scores = [h.scores["rerank"] for h in head]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    assert all("rerank" not in h.scores for h in hits[0][4:])


# --- CLI bad inputs: one line, exit 1, nothing written ---------------------------------


def _cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("", "c.jsonl", "corpus has no usable text"),  # empty file
        ('{"title": "A", "body": "x"}\n', "c.jsonl", "missing column 'text'"),
        ("\x00\x01garbage", "c.parquet", "cannot be read as parquet"),
    ],
)
def test_index_bad_corpus(tmp_path: Path, content: str, name: str, message: str) -> None:
    corpus = tmp_path / name
    corpus.write_text(content)
    out = tmp_path / "idx"
    code, output = _cli("index", corpus, "--out", out)
    assert code == 1
    assert output.startswith("error: ") and message in output and "\n" not in output
    assert not (out / "manifest.json").exists()


def test_retrieve_bad_inputs(built: Path, tmp_path: Path) -> None:
    good = tmp_path / "q.csv"
    wiki_questions(4).to_csv(good, index=False)
    bad = tmp_path / "bad.csv"
    wiki_questions(4).drop(columns=["prompt"]).to_csv(bad, index=False)
    out = tmp_path / "out.csv"
    cases = [
        ((bad, "--index", built), "missing column(s) 'prompt'"),
        (
            (good, "--index", built, "--k", "0"),
            "--k 0: retrieval.k: Input should be greater than or equal to 1",
        ),
        ((good, "--index", built, "--k", "999"), "k (999) is more than the hits fused"),
        ((good, "--index", built, "--k", "999", "--set", "retrieval.bm25_candidates=999"), "holds"),
        ((good, "--index", tmp_path), "not a complete sciqa index"),
        ((good, "--index", tmp_path / "nope"), "no such index folder"),
    ]
    for args, message in cases:
        code, output = _cli("retrieve", *args, "--out", out)
        assert code == 1, output
        assert output.startswith("error: ") and message in output and "\n" not in output
        assert not out.exists()
    code, output = _cli("retrieve", good, "--index", built, "--out", out, "--k", "1")
    assert code == 0, output
    assert pd.read_csv(out)["context"].str.len().gt(0).all()
