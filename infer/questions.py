"""The questions of a run: what every member scores, in the order of every output."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from sciqa.io import read_questions
from sciqa.layouts import Layout
from sciqa.schema import ANSWER, CONTEXT, ID, PROMPT, option_letters


@dataclass(frozen=True, eq=False)
class Questions:
    frame: pd.DataFrame
    letters: list[str]  # the option columns, A.. in order

    @classmethod
    def read(cls, path: Path, layout: Layout | None = None) -> Questions:
        """A questions file, save_to_disk folder or hf:NAME, read in ``layout``."""
        frame = read_questions(path, layout=layout)
        return cls(frame, option_letters(frame.columns))

    @cached_property
    def ids(self) -> list[str]:
        return self.frame[ID].astype(str).tolist()

    @cached_property
    def hash(self) -> str:
        """Hash of what the models see (ids, prompts, options, context), not of the labels."""
        columns = [ID, PROMPT, *self.letters]
        columns += [CONTEXT] if CONTEXT in self.frame.columns else []
        payload = self.frame[columns].astype(str).to_json(orient="values", force_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    @cached_property
    def answers(self) -> list[str] | None:
        """The answer of every question, or None unless every one is labelled."""
        frame = self.frame
        labelled = ANSWER in frame.columns and frame[ANSWER].astype(bool).all()
        return frame[ANSWER].tolist() if labelled else None
