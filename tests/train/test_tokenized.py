"""Tokenization through ``Dataset.map`` with a fingerprinted cache (train.tokenized): a
table is encoded once per run and read back by reruns; the fingerprint follows the
tokenizer, the settings and the rows; the cached rows are the ones the encoders give."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("datasets")

from sciqa.config import CausalLMConfig, TrainConfig
from sciqa.errors import SciqaError
from sciqa.io import write_table
from sciqa.scoring.llm_prompts import encode_for_llm
from sciqa.scoring.llm_scoring import full_features
from tests.builders import TRAIN_WORDS, build_tiny_llama, train_questions
from train.causal import CausalBackend
from train.commands import run_train
from train.dataset import mc_columns
from train.model import EncoderBackend
from train.tokenized import TokenizedTables, fingerprint, source_columns

LETTERS = list("ABCD")


class Counting:
    """A backend that counts the questions it encodes (what a cache hit must not do)."""

    def __init__(self, backend):
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.rows = 0

    def encode_batch(self, frame):
        self.rows += len(frame)
        return self.backend.encode_batch(frame)

    def encoding_key(self):
        return self.backend.encoding_key()


def encoder(backbone: str, **train) -> EncoderBackend:
    return EncoderBackend(LETTERS, backbone=backbone, train=TrainConfig(max_length=48, **train))


def stamp(backend, frame) -> str:
    return fingerprint(backend, frame[source_columns(frame, LETTERS)])


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    texts = [" ".join(TRAIN_WORDS), *train_questions(8)["context"]]
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), texts))


def causal(path: str, frame, max_length: int = 48, **causal_lm) -> CausalBackend:
    config = CausalLMConfig(max_length=max_length, **causal_lm)
    return CausalBackend(path, frame, LETTERS, backbone=path, train=TrainConfig(), causal_lm=config)


def test_a_table_is_tokenized_once_and_read_back_by_a_rerun(tiny_bert, tmp_path):
    table = train_questions(20)
    folds = [table.iloc[[5, 1, 17, 3]], table.iloc[[0, 2, 19]]]  # not in table order
    counting = Counting(encoder(tiny_bert))
    tokens = TokenizedTables(counting, LETTERS, tmp_path)
    splits = [tokens.split(table, rows) for rows in folds]
    assert counting.rows == 1 + len(table)  # the types probe, then each row once
    assert [s["cached"] for s in tokens.summary()] == [False]
    assert len(list(tmp_path.glob("*.arrow"))) == 1

    for split, rows in zip(splits, folds, strict=True):
        direct = mc_columns(
            counting.tokenizer, rows, max_length=48, use_context=True, letters=LETTERS
        )
        assert split.ids == rows["id"].tolist()
        assert split.lengths == direct["length"]
        assert [f["input_ids"] for f in split.features] == direct["input_ids"]
        assert [f["labels"] for f in split.features] == direct["labels"]
        assert "id" not in split.features.column_names  # the collator gets features only

    rerun = TokenizedTables(counting, LETTERS, tmp_path)
    again = rerun.split(table, folds[0])
    assert counting.rows == 1 + len(table)  # nothing tokenized
    assert [s["cached"] for s in rerun.summary()] == [True]
    assert list(again.features) == list(splits[0].features)


@pytest.mark.parametrize(
    "change",
    [
        "tokenizer",
        "max_length",
        "use_context",
        "an option's text",
        "a context",
        "row order",
    ],
)
def test_the_fingerprint_follows_what_the_token_ids_depend_on(tiny_bert, tiny_deberta, change):
    table = train_questions(12)
    same = stamp(encoder(tiny_bert), table)
    used = encoder(tiny_bert)
    used.encode_batch(table)  # a tokenizer that has run hashes as a fresh one
    assert stamp(used, table.assign(source="not read")) == same

    backend, rows = encoder(tiny_bert), table.copy()
    if change == "tokenizer":
        backend = encoder(tiny_deberta)
    elif change == "max_length":
        backend = EncoderBackend(LETTERS, backbone=tiny_bert, train=TrainConfig(max_length=64))
    elif change == "use_context":
        backend = encoder(tiny_bert, use_context=False)
    elif change == "an option's text":
        rows.loc[3, "B"] = rows.loc[3, "B"] + " x"
    elif change == "a context":
        rows.loc[0, "context"] = ""
    else:
        rows = rows.iloc[::-1]
    assert stamp(backend, rows) != same


@pytest.mark.parametrize(
    ("settings", "other"),
    [
        ({}, {"cloze_template": "{context}Q: {prompt}\nA:"}),
        ({}, {"context_template": "{context}\n"}),
        ({}, {"normalise": "sum"}),
        ({"mode": "letter"}, {"mode": "letter", "chat_template": "off"}),
    ],
)
def test_causal_fingerprint_follows_the_prompt(tiny_llama, settings, other):
    table = train_questions(8)
    same = stamp(causal(tiny_llama, table, **settings), table)
    assert stamp(causal(tiny_llama, table, **settings), table) == same
    assert stamp(causal(tiny_llama, table, **other), table) != same


def test_causal_fingerprint_follows_the_chat_template_and_rows_match_the_encoder(
    tiny_llama, tmp_path
):
    table = train_questions(10)
    backend = causal(tiny_llama, table, mode="letter", chat_template="on")
    other = causal(tiny_llama, table, mode="letter", chat_template="on")
    other.tokenizer.chat_template = other.tokenizer.chat_template.replace("assistant", "bot")
    assert stamp(backend, table) != stamp(other, table)

    rows = table.iloc[[4, 0, 9]]
    split = TokenizedTables(backend, LETTERS, tmp_path).split(table, rows)
    direct = encode_for_llm(backend.tokenizer, rows, backend.spec, letters=LETTERS)
    assert list(split.features) == full_features(direct)


def test_context_cuts_and_overlong_rows_are_counted_from_the_cache(tiny_llama, tmp_path):
    table = train_questions(6)
    table.loc[[1, 4], "context"] = " ".join(["energy"] * 200)
    table.loc[2, "prompt"] = " ".join(["energy"] * 200)  # too long even without context
    backend = causal(tiny_llama, table, max_length=160)
    tokens = TokenizedTables(backend, LETTERS, tmp_path)
    split = tokens.split(table, table)
    assert (split.cut, split.overlong) == (3, 1)  # row 2 has a context to cut as well
    rerun = TokenizedTables(backend, LETTERS, tmp_path).split(table, table.iloc[[1, 3]])
    assert (rerun.cut, rerun.overlong) == (1, 0)


def test_a_damaged_cache_file_is_tokenized_again(tiny_bert, tmp_path, caplog):
    table = train_questions(8)
    counting = Counting(encoder(tiny_bert))
    expected = list(TokenizedTables(counting, LETTERS, tmp_path).split(table, table).features)
    [file] = tmp_path.glob("*.arrow")
    data = file.read_bytes()
    file.unlink()  # a new file: the first one may still be memory-mapped
    file.write_bytes(data[:100])
    with caplog.at_level("WARNING", logger="train"):
        again = TokenizedTables(counting, LETTERS, tmp_path).split(table, table)
    assert "unreadable" in caplog.text and str(file) in caplog.text
    assert list(again.features) == expected
    assert counting.rows == 2 * (1 + len(table))


def test_an_unusable_cache_folder_is_one_line_naming_the_key(tiny_bert, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    tokens = TokenizedTables(encoder(tiny_bert), LETTERS, blocker / "cache")
    with pytest.raises(SciqaError, match=r"^train\.tokenize_cache = .*: cannot create it") as e:
        tokens.split(train_questions(4), train_questions(4))
    assert "\n" not in str(e.value)


def test_folds_share_one_tokenization_and_a_rerun_reads_it(tmp_path, bert_config):
    questions = write_table(train_questions(24), tmp_path / "q.csv")
    cache = tmp_path / "cache"
    config = bert_config("train.folds=2", f"train.tokenize_cache={cache}")
    run_train(questions, tmp_path / "first", config)
    run_train(questions, tmp_path / "rerun", config)  # another out dir: a fresh run
    for out, cached in (("first", False), ("rerun", True)):
        manifest = json.loads((tmp_path / out / "manifest.json").read_text())
        [table] = manifest["tokenized"]  # both folds' rows from one tokenized table
        assert table["rows"] == 24 and table["cached"] is cached
    assert len(list(cache.glob("*.arrow"))) == 1

    run_train(questions, tmp_path / "longer", bert_config("train.folds=2", "train.max_length=40"))
    longer = json.loads((tmp_path / "longer" / "manifest.json").read_text())["tokenized"]
    assert not longer[0]["cached"] and longer[0]["fingerprint"] != table["fingerprint"]
