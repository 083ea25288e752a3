import os

import pandas as pd
import pytest


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
