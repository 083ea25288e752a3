"""Queries from questions, and the ``context`` string from ranked passages.

The query is the question plus its options (``retrieval.query_template``), as the winning
Kaggle teams did: the options name the concepts the passage must cover. The context is
the best passages first, joined by blank lines, cut to ``retrieval.context_budget``
characters or backbone tokens, so what the multiple-choice encoder later truncates is at
most the tail of the last passage, never the question or options.

>>> build_context(["a b c", "d e f"], budget=8, measure=len)
'a b c\\n\\nd'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from retrieval.errors import RetrievalInputError
from sciqa.schema import PROMPT, option_letters

SEPARATOR = "\n\n"


def check_template(template: str, key: str, fields: Sequence[str]) -> None:
    """Fail early, naming the config key, when a template uses unknown placeholders."""
    try:
        template.format(**{name: "" for name in fields})
    except (KeyError, IndexError, ValueError) as exc:
        raise RetrievalInputError(
            f"retrieval.{key} = {template!r}: bad placeholder {exc}; "
            f"use only {', '.join('{' + f + '}' for f in fields)}"
        ) from None


def queries(frame: pd.DataFrame, template: str) -> list[str]:
    """One query per question: ``template`` filled with the prompt and its options."""
    check_template(template, "query_template", ("prompt", "options"))
    letters = option_letters(frame.columns)
    options = frame[letters].astype(str).agg(" ".join, axis=1) if letters else ""
    return [
        template.format(prompt=p, options=o)
        for p, o in zip(frame[PROMPT].astype(str), options, strict=True)
    ]


def _cut(text: str, budget: int, measure: Callable[[str], int]) -> str:
    """Longest word prefix of ``text`` that fits ``budget`` (binary search on words)."""
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(" ".join(words[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def build_context(passages: Sequence[str], budget: int, measure: Callable[[str], int]) -> str:
    """Passages best first while they fit; the first that does not is cut at a word."""
    parts: list[str] = []
    for passage in passages:
        candidate = SEPARATOR.join([*parts, passage])
        if measure(candidate) <= budget:
            parts.append(passage)
            continue
        room = SEPARATOR.join([*parts, ""]) if parts else ""
        rest = _cut(passage, budget - measure(room), measure) if measure(room) < budget else ""
        if rest:
            parts.append(rest)
        break
    return SEPARATOR.join(parts)


def token_counter(tokenizer: object) -> Callable[[str], int]:
    """Measure text in the backbone's tokens (no special tokens)."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    return count
