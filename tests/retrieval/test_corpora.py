"""Corpora at dump scale: streamed reading of the Hugging Face Wikipedia dump layout,
wikiextractor output, save_to_disk folders and ``hf:`` names; ``--shard`` by files."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pandas as pd
import pytest

from retrieval import corpus_sources, lexical
from retrieval.commands import run_index
from retrieval.corpus import article_batches, read_corpus
from retrieval.corpus_sources import hub_shards
from retrieval.errors import CorpusError
from retrieval.search import Retriever
from sciqa.assets.registry import packaged_wikipedia
from sciqa.errors import SciqaError
from sciqa.hf_datasets import HubSpec, stream_split
from tests.builders import (
    DUMP_CONFIG,
    RETRIEVAL_SMALL,
    WIKI_ARTICLES,
    WIKI_QUESTIONS,
    make_config,
    write_wiki_dump,
)

pytestmark = pytest.mark.usefixtures("in_tmp")
BM25_ONLY = (*RETRIEVAL_SMALL, "retrieval.dense=false")


@pytest.fixture(scope="module")
def packaged() -> pd.DataFrame:
    """The first 200 packaged Wikipedia articles."""
    return packaged_wikipedia().head(200).reset_index(drop=True)


@pytest.fixture
def dump(tmp_path: Path, packaged: pd.DataFrame) -> Path:
    return write_wiki_dump(tmp_path / "wikipedia", packaged, n_files=3)


def _passages(index: Path) -> pd.DataFrame:
    return pd.read_parquet(index / "passages.parquet")


def _manifest(index: Path) -> dict:
    return json.loads((index / "manifest.json").read_text())


def _bm25_hits(index: Path, *overrides: str) -> list[list[int]]:
    config = make_config(*BM25_ONLY, *overrides)
    retriever = Retriever.open(index, config.retrieval, embedding="default", reranker=None)
    return [[h.row for h in q] for q in retriever.search(list(WIKI_QUESTIONS), top=5)]


# --- the dump layout, streamed ------------------------------------------------------------


def test_dump_folder_is_read_in_batches_and_indexes_like_one_file(
    dump: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = tmp_path / "one.jsonl"
    pd.concat([pd.read_parquet(f) for f in sorted(dump.iterdir())]).to_json(
        one, orient="records", lines=True
    )
    run_index(one, tmp_path / "from-file", make_config(*BM25_ONLY))
    monkeypatch.setattr(corpus_sources, "BATCH", 7)  # many batches per shard file
    sizes: list[int] = []
    original = article_batches

    def spy(sources):  # what the build is fed, batch by batch
        for batch in original(sources):
            sizes.append(len(batch))
            yield batch

    monkeypatch.setattr("retrieval.ingest.article_batches", spy)
    run_index(dump, tmp_path / "from-dump", make_config(*BM25_ONLY))
    assert max(sizes) <= 7 and sum(sizes) == 200 and len(sizes) >= 200 // 7
    pd.testing.assert_frame_equal(
        _passages(tmp_path / "from-dump"), _passages(tmp_path / "from-file")
    )
    assert _passages(tmp_path / "from-dump")["article_id"].iloc[0] == "1000"  # the dump's ids
    manifest = _manifest(tmp_path / "from-dump")
    assert manifest["counts"]["articles"] == 200
    assert [Path(i["path"]).name for i in manifest["inputs"]] == [
        f"train-0000{k}-of-00003.parquet" for k in range(3)
    ]
    assert _bm25_hits(tmp_path / "from-dump") == _bm25_hits(tmp_path / "from-file")


def test_dump_shard_without_text_names_the_file_and_its_columns(dump: Path, tmp_path: Path) -> None:
    bad = dump / "train-00001-of-00003.parquet"
    pd.read_parquet(bad).drop(columns=["text"]).to_parquet(bad)
    with pytest.raises(CorpusError) as info:
        run_index(dump, tmp_path / "idx", make_config(*BM25_ONLY))
    assert str(info.value) == (
        f"{bad}: missing column 'text' (the article body); found 'id', 'url', 'title'. "
        "A corpus needs 'text' and, ideally, 'title'"
    )
    assert not (tmp_path / "idx").exists()


def test_an_id_in_two_files_is_refused_by_name(dump: Path, tmp_path: Path) -> None:
    second = dump / "train-00002-of-00003.parquet"
    frame = pd.read_parquet(second)
    frame.loc[3, "id"] = "1001"  # also in the first file
    frame.to_parquet(second)
    with pytest.raises(CorpusError, match=r"article id '1001' appears in more than one"):
        read_corpus(dump)


# --- BM25 from token ids ------------------------------------------------------------------


def test_bm25_from_batched_token_ids_scores_like_bm25s_on_the_whole_text(
    packaged: pd.DataFrame,
) -> None:
    texts = (packaged["title"] + "\n" + packaged["text"]).tolist()
    tokens = lexical.TokenIds("english", "en")
    for start in range(0, len(texts), 37):  # batch by batch, one vocabulary
        tokens.add(texts[start : start + 37])
    ours = lexical.build(tokens, method="lucene", k1=1.5, b=0.75)
    reference = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    reference.index(bm25s.tokenize(texts, stopwords="en", stemmer=lexical._stemmer("english")))
    queries = [*WIKI_QUESTIONS, *packaged["title"].head(20)]
    for query in queries:
        words = lexical.tokenize([query], "english", "en")[0]
        np.testing.assert_allclose(ours.get_scores(words), reference.get_scores(words), rtol=1e-6)


# --- --shard by files ---------------------------------------------------------------------


@pytest.mark.assets
@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat"])
def test_shards_of_a_dump_are_its_files_and_merge_to_a_single_build(
    tmp_path: Path, factory: str
) -> None:
    articles = pd.DataFrame({"title": list(WIKI_ARTICLES), "text": list(WIKI_ARTICLES.values())})
    dump = write_wiki_dump(tmp_path / "wiki", articles, n_files=4)
    config = make_config(
        *RETRIEVAL_SMALL, f"retrieval.faiss_factory={factory}", "retrieval.nprobe=2"
    )
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run_index(dump, single, config)
    if factory != "Flat":
        run_index(dump, sharded, config, train=True)
    for shard in (1, 0):  # any order
        run_index(dump, sharded, config, shard=f"{shard}/2")
    part = sharded / "shards" / "00001-of-00002"
    assert _manifest(part)["shard"] == {"index": 1, "of": 2, "by": "files", "range": [2, 4]}
    ids = set(_passages(part)["article_id"])
    assert ids == {str(1000 + i) for i in range(len(articles) // 2, len(articles))}
    run_index(None, sharded, config, merge=True)
    pd.testing.assert_frame_equal(_passages(single), _passages(sharded))
    assert _manifest(sharded)["counts"] == _manifest(single)["counts"]
    settings = config.retrieval
    a = Retriever.open(single, settings, embedding="default", reranker=None)
    b = Retriever.open(sharded, settings, embedding="default", reranker=None)
    hits = [a.search(list(WIKI_QUESTIONS), top=5), b.search(list(WIKI_QUESTIONS), top=5)]
    assert [[h.row for h in q] for q in hits[0]] == [[h.row for h in q] for q in hits[1]]


# --- wikiextractor, save_to_disk, hf: -----------------------------------------------------


def test_wikiextractor_doc_files(tmp_path: Path) -> None:
    folder = tmp_path / "extracted" / "AA"
    folder.mkdir(parents=True)
    (folder / "wiki_00").write_text(
        '<doc id="12" url="https://en.wikipedia.org/wiki?curid=12" title="Anarchism">\n'
        "Anarchism\n\nAnarchism is a political philosophy.\nIt is sceptical of authority.\n"
        "</doc>\n"
        '<doc id="25" url="https://en.wikipedia.org/wiki?curid=25" title="Autism">\n'
        "Autism\n\nAutism is a neurodevelopmental condition.\n</doc>\n"
    )
    articles, _ = read_corpus(tmp_path / "extracted")
    assert articles.to_dict("records") == [
        {
            "article_id": "12",
            "title": "Anarchism",
            "text": "Anarchism is a political philosophy. It is sceptical of authority.",
        },
        {
            "article_id": "25",
            "title": "Autism",
            "text": "Autism is a neurodevelopmental condition.",
        },
    ]
    (folder / "wiki_01").write_text('<doc id="7" url="u" title="Cut">\nCut\n\nHalf an art')
    with pytest.raises(CorpusError, match=r"wiki_01: <doc id='7'> has no </doc>"):
        read_corpus(tmp_path / "extracted")


def test_save_to_disk_corpus_folder(tmp_path: Path, packaged: pd.DataFrame) -> None:
    import datasets

    datasets.Dataset.from_pandas(packaged.head(30)[["title", "text"]]).save_to_disk(
        tmp_path / "saved"
    )
    articles, sources = read_corpus(tmp_path / "saved")
    assert articles["title"].tolist() == packaged.head(30)["title"].tolist()
    assert all(s.path is not None and s.path.suffix == ".arrow" for s in sources)


def test_hub_corpus_streams_the_same_articles_as_its_downloaded_shards(
    dump: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    # load_dataset reads a local folder laid out like the Hub repository the same way;
    # only the offline guard has to be lifted (nothing here reaches the network).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    spec = HubSpec(str(dump.parent), DUMP_CONFIG, None)
    stream, files = stream_split("hf:wikimedia/wikipedia", spec)
    sources = hub_shards("hf:wikimedia/wikipedia", stream, files)
    assert [Path(s.label).name for s in sources] == [p.name for p in sorted(dump.iterdir())]
    streamed = pd.concat(article_batches(sources), ignore_index=True)
    local = pd.concat(article_batches(corpus_sources.corpus_sources(dump)), ignore_index=True)
    pd.testing.assert_frame_equal(streamed, local)
    with pytest.raises(SciqaError, match=r"no split 'test'; its splits are train"):
        stream_split("hf:wikimedia/wikipedia@test", HubSpec(str(dump.parent), DUMP_CONFIG, "test"))


def test_hub_corpus_offline_says_how_to_download_it(tmp_path: Path) -> None:
    with pytest.raises(SciqaError) as info:
        run_index("hf:wikimedia/wikipedia:20231101.en", tmp_path / "idx", make_config(*BM25_ONLY))
    message = str(info.value)
    assert message.startswith("hf:wikimedia/wikipedia:20231101.en: streamed from the Hub")
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message
    assert (
        "`hf download wikimedia/wikipedia --repo-type dataset --include '20231101.en/*' "
        "--local-dir DIR` and pass DIR/20231101.en"
    ) in message
