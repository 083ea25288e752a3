import os
from pathlib import Path

import pandas as pd
import pytest

from tests.builders import write_wiki


@pytest.fixture
def questions() -> pd.DataFrame:
    """Three valid labelled questions in the Kaggle layout.

    Hand-written, not ``tests.builders.make_questions``: tests depend on the exact data
    (ids "0", "1", "2" and answers A, B, B in expected messages and scores, the NA-like
    options "None" and "NA" a round trip must keep, the first prompt's text in a query).
    """
    return pd.DataFrame(
        {
            "id": ["0", "1", "2"],
            "prompt": [
                "Which particle mediates the electromagnetic force?",
                "What is the SI unit of magnetic flux?",
                "Which gas makes up most of Earth's atmosphere?",
            ],
            "A": ["Photon", "Tesla", "Oxygen"],
            "B": ["Gluon", "Weber", "Nitrogen"],
            "C": ["W boson", "Henry", "Argon"],
            "D": ["Graviton", "Gauss", "Carbon dioxide"],
            "E": ["Higgs boson", "None", "NA"],
            "answer": ["A", "B", "B"],
        }
    )


def pytest_configure(config):
    # Tests never download: a model that is not packaged must fail, not fetch.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in ``tmp_path``: run dirs (``runs/<stage>/...``) land there, not in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The small wiki corpus of ``tests.builders`` as ``tmp_path/wiki.jsonl``."""
    return write_wiki(tmp_path / "wiki.jsonl")
