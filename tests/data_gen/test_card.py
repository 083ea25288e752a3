"""What `sciqa gen` leaves for others: a dataset card (README.md) that `datasets` reads
offline as it is, and an --out without a suffix written as a save_to_disk folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from data_gen.dataset_card import card_text
from data_gen.fake_server import FakeLLM
from data_gen.prompts import LAYOUT_TEMPLATES
from sciqa.cli import app
from sciqa.io import read_questions
from tests.builders import make_config

datasets = pytest.importorskip("datasets")


def front_matter(card: Path) -> dict:
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def load_folder(folder: Path, tmp_path: Path):
    """``load_dataset(FOLDER)`` as a Hub user would, offline, caching under tmp_path."""
    return datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))["train"]


def test_the_card_describes_the_run_and_datasets_loads_the_folder_as_it_is(
    passages_file, tmp_path, run_fake
):
    script = {"T1": ["malformed", "malformed"], "T3": ["length"]}
    out = tmp_path / "gen" / "q.parquet"
    with FakeLLM(script) as fake:
        counts = run_fake(passages_file, out, fake, "gen.reask_budget=1", "gen.dedup=true")
    written = read_questions(out, require_answer=True)
    meta = front_matter(out.parent / "README.md")

    assert meta["license"] == "cc-by-sa-4.0" and meta["size_categories"] == ["n<1K"]
    assert meta["task_ids"] == ["multiple-choice-qa"]
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "q.parquet"}]}
    ]
    info = meta["dataset_info"]
    assert [f["name"] for f in info["features"]] == list(pd.read_parquet(out).columns)
    assert info["splits"][0]["num_examples"] == len(written) == counts["postprocess"]["kept"]
    sciqa = meta["sciqa"]
    assert sciqa["writer_model"] == "fake-model"
    prompts = LAYOUT_TEMPLATES["answer_first"]
    assert sciqa["prompts_file"] == prompts.name
    assert sciqa["prompts_sha256"] == hashlib.sha256(prompts.read_bytes()).hexdigest()
    assert sciqa["passages_file"] == "passages.parquet"
    assert sciqa["replies"]["rejected_by_reason"] == {"not_json": 2, "finish_length": 1}
    assert sciqa["filters"]["duplicates"]["setting"].startswith("exact, and cosine >= 0.92")
    assert sciqa["filters"]["unanswerable"] == {"setting": "off", "dropped": 0}
    assert sciqa["kept"] == len(written)
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["outputs"]["card"] == str(out.parent / "README.md")

    # The folder holds rejects, a manifest and a cache too: the card's configs pick OUT.
    loaded = load_folder(out.parent, tmp_path)
    assert loaded["id"] == written["id"].tolist() and loaded["A"] == written["A"].tolist()
    direct = datasets.load_dataset("parquet", data_files=str(out), cache_dir=str(tmp_path / "hf"))[
        "train"
    ]
    assert direct["id"] == written["id"].tolist()


def test_a_csv_card_keeps_options_that_csv_readers_take_for_missing(tmp_path):
    kept = pd.DataFrame(
        {
            "id": ["0", "1"],
            "prompt": ["Which is it?", "And this?"],
            "A": ["None", "water"],
            "B": ["NA", "ice"],
            "answer": ["A", "B"],
        }
    )
    folder = tmp_path / "gen"
    folder.mkdir()
    out = folder / "q.csv"
    kept.to_csv(out, index=False)
    passages = tmp_path / "p.csv"
    passages.write_text("passage_id,title,text\n")
    counts = {
        "selection": {"passages": 1, "science": 1, "selected": 1},
        "replies": {"jobs": 2, "replies": 2, "valid": 2, "rejected_by_reason": {}},
        "postprocess": {"kept": 2, "dropped_by_reason": {}},
    }
    text = card_text(
        kept,
        out,
        make_config(),
        counts,
        writer="w",
        prompts=LAYOUT_TEMPLATES["letters"],
        passages=passages,
        excludes=[],
    )
    (folder / "README.md").write_text(text)
    loaded = load_folder(folder, tmp_path)
    assert loaded["A"] == ["None", "water"] and loaded["B"] == ["NA", "ice"]
    assert loaded["id"] == ["0", "1"]  # the card's features: ids stay text


def test_an_out_without_suffix_is_a_save_to_disk_folder_replaced_whole(
    passages_file, tmp_path, run_fake
):
    out = tmp_path / "gen" / "q"
    with FakeLLM() as fake:
        run_fake(passages_file, out, fake, n=3)
        first = datasets.load_from_disk(str(out))
        assert len(first) == 3 and first.info.license == "cc-by-sa-4.0"
        assert read_questions(out, require_answer=True)["id"].tolist() == first["id"]
        run_fake(passages_file, out, fake, n=5)  # a rerun replaces the folder whole
    beside = {"README.md", "config.yaml", "manifest.json", "q.rejected.jsonl"}
    assert beside <= {p.name for p in (tmp_path / "gen").iterdir()}
    assert not list((tmp_path / "gen").glob(".q.partial")) + list((tmp_path / "gen").glob(".q.old"))
    assert len(datasets.load_from_disk(str(out))) == 5
    meta = front_matter(tmp_path / "gen" / "README.md")
    assert meta["configs"][0]["data_files"][0]["path"] == "q/data-*.arrow"
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 5
    assert len(load_folder(tmp_path / "gen", tmp_path)) == 5


def _refused(passages: Path, out: Path, fake_args) -> str:
    with FakeLLM() as fake:
        args = ["gen", str(passages), "--out", str(out), "--n", "2"]
        result = CliRunner().invoke(app, [*args, *fake_args(fake.base_url)])
    assert fake.requests == []  # refused before anything was asked
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    return line


def test_an_out_folder_that_is_not_a_saved_dataset_is_refused(passages_file, tmp_path, fake_args):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    line = _refused(passages_file, folder, fake_args)
    assert line.startswith(f"error: {folder}: --out is an existing folder but not a datasets")
    assert (folder / "notes.txt").read_text() == "keep me"
    (tmp_path / "plain").write_text("x")
    line = _refused(passages_file, tmp_path / "plain", fake_args)
    assert line.startswith(f"error: {tmp_path / 'plain'}: --out is an existing file;")


def test_a_readme_gen_did_not_write_is_never_replaced(passages_file, tmp_path, fake_args):
    readme = tmp_path / "README.md"
    readme.write_text("# my project\n")
    line = _refused(passages_file, tmp_path / "q.parquet", fake_args)
    assert line.startswith(f"error: {readme}: exists and sciqa gen did not write it;")
    assert readme.read_text() == "# my project\n" and not (tmp_path / "q.parquet").exists()
