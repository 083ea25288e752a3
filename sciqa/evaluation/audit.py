"""Bias audit of a labelled question set: do shortcuts that never reason find the answer?

A set whose correct option is often the longest one, or the one that repeats the
question's words, teaches a model that shortcut instead of science. The audit measures:

- **answer letters**: counts, shares and a chi-square test against the uniform share;
- **baselines**: MAP@3 of rankings by a surface feature (``longest`` option,
  ``question_overlap``: content words shared with the question, ``passage_overlap``:
  shared with the passage/context) against chance, ``H(min(k, 3)) / k`` for ``k``
  options (0.367 for 5, 0.458 for 4), with a bootstrap interval and the chance band
  (:mod:`sciqa.evaluation.chance`; ties count at their expected rank, so no letter is favoured);
- **flags**: questions one shortcut answers by a clear margin (correct option
  ``length_ratio`` times longer than any other; ``overlap_margin`` more shared words).

``sciqa audit QUESTIONS`` prints it; ``sciqa gen`` writes it to its manifest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sciqa.errors import SchemaError
from sciqa.evaluation.chance import (
    chance_map_at_3,
    chi2_sf,
    compare_to_chance,
    tie_aware_ap,
    tie_aware_top1,
)
from sciqa.evaluation.intervals import bootstrap_interval
from sciqa.io import read_questions, read_table
from sciqa.layouts import Layout
from sciqa.schema import ANSWER, CONTEXT, ID, PROMPT, SOURCE_ID, option_letters, validate_questions

FORMAT = "sciqa-audit/1"
LONGEST, QUESTION_OVERLAP, PASSAGE_OVERLAP = "longest", "question_overlap", "passage_overlap"
BASELINES = (LONGEST, QUESTION_OVERLAP, PASSAGE_OVERLAP)
# Function words carry no content: "the" in both question and option is no shortcut.
_FUNCTION_WORDS = """
    a an the of in on at to for from by with and or but not no nor is are was were be been
    being am it its this that these those which what who whom whose when where why how as than
    then there their they them he she his her him we our us you your i me my do does did can
    could will would should shall may might must has have had into onto over under about
    between during after before so if all any each both some such only most more other"""
STOPWORDS = frozenset(_FUNCTION_WORDS.split())
_WORD = re.compile(r"[^\W_]+")


def content_words(text: object) -> set[str]:
    """Lower-cased words of ``text`` minus function words.

    >>> sorted(content_words("The Sun's energy, and the MOON"))
    ['energy', 'moon', 's', 'sun']
    """
    return {w for w in _WORD.findall(str(text).casefold()) if w not in STOPWORDS}


# --- reading --------------------------------------------------------------------------


def read_labelled(path: str, layout: Layout | None = None) -> pd.DataFrame:
    """Questions (a file, a save_to_disk folder or hf:NAME) with an answer on every row;
    questions without labels are refused by name."""
    frame = read_questions(path, layout=layout)
    if ANSWER not in frame.columns:
        found = ", ".join(repr(str(c)) for c in frame.columns) or "no columns"
        raise SchemaError(
            f"{path}: no 'answer' column (found {found}); the audit needs labelled questions, "
            "the correct letter on every row"
        )
    return validate_questions(frame, str(path), require_answer=True)


def passages_by_source(frame: pd.DataFrame, passages_path: str, source: str) -> pd.Series:
    """Each question's passage text from a passages table (``passage_id, text``), joined
    on the questions' ``source_id`` (what ``sciqa gen`` writes)."""
    passages = read_table(passages_path)
    missing = [c for c in ("passage_id", "text") if c not in passages.columns]
    if missing:
        found = ", ".join(repr(str(c)) for c in passages.columns) or "no columns"
        raise SchemaError(
            f"{passages_path}: missing column(s) {', '.join(map(repr, missing))}; found {found}"
        )
    if SOURCE_ID not in frame.columns:
        raise SchemaError(
            f"{source}: no 'source_id' column to join --passages {passages_path} on "
            "(passage_id); attach passages as a 'context' column instead"
        )
    keys = frame[SOURCE_ID].astype(str)
    ids = passages["passage_id"].astype(str)
    wanted = ids.isin(keys)  # a corpus-sized passages table: keep only what is joined
    text = dict(zip(ids[wanted], passages.loc[wanted, "text"].fillna("").astype(str), strict=True))
    unmatched = np.flatnonzero(~keys.isin(text).to_numpy())
    if len(unmatched):
        row = int(unmatched[0])
        more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
        raise SchemaError(
            f"{source}: row {row + 1}, id={frame[ID].iat[row]}, column 'source_id': "
            f"{keys.iat[row]!r} is not a passage_id in {passages_path}{more}"
        )
    return keys.map(text).reset_index(drop=True)


def context_passages(frame: pd.DataFrame) -> pd.Series | None:
    """The ``context`` column when it holds any text, else None."""
    if CONTEXT not in frame.columns:
        return None
    context = frame[CONTEXT].fillna("").astype(str)
    return context.reset_index(drop=True) if context.str.strip().astype(bool).any() else None


# --- scores ---------------------------------------------------------------------------


def answer_index(frame: pd.DataFrame) -> np.ndarray:
    letters = option_letters(frame.columns)
    return frame[ANSWER].map(letters.index).to_numpy(dtype=int)


def option_lengths(frame: pd.DataFrame) -> np.ndarray:
    """``(n, k)`` characters per option, surrounding spaces not counted."""
    letters = option_letters(frame.columns)
    options = frame[letters].to_numpy(dtype=object)
    return np.array([[len(str(o).strip()) for o in row] for row in options], dtype=float)


def overlap_counts(frame: pd.DataFrame, references: Sequence[object]) -> np.ndarray:
    """``(n, k)`` content words each option shares with its row's reference text."""
    letters = option_letters(frame.columns)
    options = frame[letters].to_numpy(dtype=object)
    out = np.zeros(options.shape)
    for row, reference in enumerate(references):
        words = content_words(reference)
        out[row] = [len(content_words(o) & words) for o in options[row]]
    return out


def baseline_scores(
    frame: pd.DataFrame, baseline: str, passages: Sequence[object] | None = None
) -> np.ndarray:
    """``(n, k)`` scores of one baseline; higher = ranked first."""
    if baseline == LONGEST:
        return option_lengths(frame)
    if baseline == QUESTION_OVERLAP:
        return overlap_counts(frame, frame[PROMPT].tolist())
    if baseline == PASSAGE_OVERLAP:
        if passages is None:
            raise ValueError("passage_overlap needs passages")
        return overlap_counts(frame, list(passages))
    raise ValueError(f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}")


def letter_balance(frame: pd.DataFrame) -> dict[str, Any]:
    """Answer-letter counts and a chi-square goodness-of-fit test against uniform."""
    letters = option_letters(frame.columns)
    counts = frame[ANSWER].value_counts().reindex(letters, fill_value=0)
    expected = len(frame) / len(letters)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    p_value = chi2_sf(chi2, len(letters) - 1)
    return {
        "counts": {k: int(v) for k, v in counts.items()},
        "shares": {k: round(v / len(frame), 4) for k, v in counts.items()},
        "uniform_share": round(1 / len(letters), 4),
        "chi2": round(chi2, 3),
        "df": len(letters) - 1,
        "p_value": round(p_value, 4),
        "balanced": p_value >= 0.05,
    }


# --- flags ----------------------------------------------------------------------------


def shortcut_flags(
    frame: pd.DataFrame,
    baseline: str,
    scores: np.ndarray,
    answer: np.ndarray,
    length_ratio: float,
    overlap_margin: int,
) -> list[dict[str, Any]]:
    """Questions whose correct option this baseline ranks first by a clear margin."""
    letters = option_letters(frame.columns)
    rows = np.arange(len(frame))
    correct = scores[rows, answer]
    others = scores.copy()
    others[rows, answer] = -np.inf
    best_other = others.max(axis=1)
    if baseline == LONGEST:
        margin = correct / best_other
        flagged = margin >= length_ratio
    else:
        margin = correct - best_other
        flagged = margin >= overlap_margin
    what = {QUESTION_OVERLAP: "the question", PASSAGE_OVERLAP: "the passage"}
    out = []
    for row in np.flatnonzero(flagged):
        letter, a, b = letters[answer[row]], int(correct[row]), int(best_other[row])
        if baseline == LONGEST:
            detail = (
                f"correct {letter} is the longest option, {margin[row]:.2f}x the next "
                f"({a} vs {b} chars)"
            )
        else:
            detail = (
                f"correct {letter} shares {a} words with {what[baseline]}, the others at most {b}"
            )
        out.append(
            {
                "row": int(row),
                "id": frame[ID].iat[row],
                "shortcut": baseline,
                "margin": round(float(margin[row]), 3),
                "detail": detail,
            }
        )
    return out


# --- the audit ------------------------------------------------------------------------


def audit_questions(
    frame: pd.DataFrame,
    *,
    passages: Sequence[object] | None = None,
    baselines: Sequence[str] = BASELINES,
    length_ratio: float = 1.5,
    overlap_margin: int = 2,
    seed: int = 42,
    resamples: int = 1000,
    skipped: str = "no passages (no 'context' column; give --passages FILE)",
) -> dict[str, Any]:
    """The audit of a validated, labelled ``frame`` as a JSON-ready dict (see module doc).

    ``passage_overlap`` runs when ``passages`` (one text per row) is given; otherwise it
    is reported as skipped with the reason ``skipped``.
    """
    if frame.empty:
        raise SchemaError("the audit needs at least one labelled question")
    letters = option_letters(frame.columns)
    frame = frame.reset_index(drop=True)
    answer = answer_index(frame)
    report: dict[str, Any] = {
        "format": FORMAT,
        "questions": len(frame),
        "options": len(letters),
        "chance_map_at_3": round(chance_map_at_3(len(letters)), 4),
        "answer_letters": letter_balance(frame),
        "baselines": {},
        "thresholds": {
            "length_ratio": length_ratio,
            "overlap_margin": overlap_margin,
            "resamples": resamples,
            "seed": seed,
        },
    }
    flags: list[dict[str, Any]] = []
    for baseline in baselines:
        if baseline == PASSAGE_OVERLAP and passages is None:
            report["baselines"][baseline] = {"skipped": skipped}
            continue
        scores = baseline_scores(frame, baseline, passages)
        ap = tie_aware_ap(scores, answer)
        ci = bootstrap_interval(ap, n_resamples=resamples, seed=seed)
        found = shortcut_flags(frame, baseline, scores, answer, length_ratio, overlap_margin)
        flags += found
        report["baselines"][baseline] = {
            "map_at_3": round(float(ap.mean()), 4),
            "ci95": [round(ci.low, 4), round(ci.high, 4)],
            "top1": round(float(tie_aware_top1(scores, answer).mean()), 4),
            **compare_to_chance(ap, len(letters)),
            "flagged": len(found),
        }
        if baseline == PASSAGE_OVERLAP:  # blank passages tie every option: chance there
            with_text = sum(bool(str(p).strip()) for p in passages)
            report["baselines"][baseline]["with_passage"] = with_text
    flagged_rows = {f["row"] for f in flags}
    report["flagged"] = {
        "questions": len(flagged_rows),
        "share": round(len(flagged_rows) / len(frame), 4),
        "by_shortcut": dict(Counter(f["shortcut"] for f in flags)),
    }
    report["flags"] = sorted(flags, key=lambda f: (f["shortcut"], -f["margin"], f["row"]))
    return report


def load_for_audit(
    path: str,
    passages_path: str | None = None,
    baselines: Sequence[str] | None = None,
    layout: Layout | None = None,
) -> tuple[pd.DataFrame, pd.Series | None, list[str]]:
    """Questions, their passages (or None) and the baselines to run, for ``sciqa audit``.

    Baselines default to all, with ``passage_overlap`` skipped when there are no passages;
    naming it explicitly without passages is an error naming the missing column.
    """
    unknown = [b for b in baselines or [] if b not in BASELINES]
    if unknown:
        raise SchemaError(
            f"--baseline: unknown baseline(s) {', '.join(unknown)}; "
            f"choose from {', '.join(BASELINES)}"
        )
    frame = read_labelled(path, layout)
    if passages_path is not None:
        passages = passages_by_source(frame, passages_path, path)
    else:
        passages = context_passages(frame)
        if passages is None and PASSAGE_OVERLAP in (baselines or []):
            state = "is empty" if CONTEXT in frame.columns else "is missing"
            raise SchemaError(
                f"{path}: column 'context' {state}, so the passage_overlap baseline has no "
                "passage; give --passages FILE (passage_id, text; joined on source_id) or "
                "leave that baseline out"
            )
    return frame, passages, list(baselines or BASELINES)


# --- printing -------------------------------------------------------------------------


def _pct(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.1f}%)"


def format_report(report: dict[str, Any], source: str, show: int = 5) -> str:
    """The table ``sciqa audit`` prints, with the ``show`` largest-margin flags per shortcut."""
    n, k = report["questions"], report["options"]
    letters = report["answer_letters"]
    lines = [
        f"{source}: {n} questions, {k} options, chance MAP@3 {report['chance_map_at_3']:.4f}",
        "answer letters: "
        + " ".join(f"{x}={c}" for x, c in letters["counts"].items())
        + f"; chi-square {letters['chi2']:.2f} (df {letters['df']}), p={letters['p_value']:.3f}: "
        + ("balanced" if letters["balanced"] else "NOT balanced"),
        f"{'baseline':<17} {'MAP@3':>6}  {'95% CI':<16} {'chance band':<16} "
        f"{'verdict':<13} flagged",
    ]
    for name, result in report["baselines"].items():
        if "skipped" in result:
            lines.append(f"{name:<17} skipped: {result['skipped']}")
            continue
        ci, band = result["ci95"], result["chance_band95"]
        lines.append(
            f"{name:<17} {result['map_at_3']:>6.4f}  {f'[{ci[0]:.3f}, {ci[1]:.3f}]':<16} "
            f"{f'[{band[0]:.3f}, {band[1]:.3f}]':<16} {result['verdict']:<13} "
            f"{_pct(result['flagged'], n)}"
        )
        if result.get("with_passage", n) < n:
            lines[-1] += f"; {result['with_passage']} of {n} questions have a passage"
    t = report["thresholds"]
    lines.append(
        f"flagged: {report['flagged']['questions']} questions "
        f"({100 * report['flagged']['share']:.1f}%) by at least one shortcut "
        f"(length ratio >= {t['length_ratio']}, overlap margin >= {t['overlap_margin']} words)"
    )
    shown: dict[str, int] = {}
    for flag in report.get("flags", []):
        if shown.get(flag["shortcut"], 0) < show:
            shown[flag["shortcut"]] = shown.get(flag["shortcut"], 0) + 1
            lines.append(f"  {flag['shortcut']}: {flag['id']}: {flag['detail']}")
    return "\n".join(lines)


def one_line(report: dict[str, Any]) -> str:
    """The audit in one line, as ``sciqa gen`` prints it."""
    letters = report["answer_letters"]
    parts = [
        f"{name} {r['map_at_3']:.3f} ({r['verdict']})"
        for name, r in report["baselines"].items()
        if "skipped" not in r
    ]
    return (
        f"audit: letters p={letters['p_value']:.2f}; "
        f"MAP@3 vs chance {report['chance_map_at_3']:.3f}: "
        + ", ".join(parts)
        + f"; flagged {report['flagged']['questions']} of {report['questions']}"
    )
