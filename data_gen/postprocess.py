"""The filter and audit steps: from valid questions to the ones worth keeping.

:func:`postprocess` keeps no duplicates, no leaks into evaluation sets, questions
answerable from the passage and not answerable without it, none that a shortcut
(longest option, words shared with the question) answers without reading, and finally
shuffles options so the answer letters are balanced. :func:`audit_frame` is the bias
audit (:mod:`sciqa.evaluation.audit`) of a set of questions, for the manifest.

Each filter is switchable in config; every dropped question becomes a record
``{"stage": "filter", "id", "reason", "detail", ...}`` for the rejects file.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from data_gen.scorers import Scorer
from sciqa.config import GenConfig
from sciqa.evaluation.audit import (
    PASSAGE_OVERLAP,
    answer_index,
    audit_questions,
    baseline_scores,
    context_passages,
    shortcut_flags,
)
from sciqa.evaluation.chance import chance_map_at_3, tie_aware_ap
from sciqa.schema import ANSWER, CONTEXT, ID, PROMPT, SOURCE_ID, option_letters

Drops = list[dict[str, Any]]


def letter_counts(frame: pd.DataFrame) -> dict[str, int]:
    letters = option_letters(frame.columns)
    counts = Counter(frame[ANSWER]) if len(frame) else Counter()
    return {letter: int(counts.get(letter, 0)) for letter in letters}


def balance_letters(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Shuffle each row's options so the correct letters cycle evenly over A, B, ...

    Targets are a shuffled round-robin, so counts differ by at most one; the
    distractors are shuffled too, so their order carries no signal either.
    """
    letters = option_letters(frame.columns)
    n = len(letters)
    rng = np.random.default_rng(seed)
    targets = rng.permutation(np.arange(len(frame)) % n)
    options = frame[letters].to_numpy(dtype=object)
    shuffled = np.empty_like(options)
    for row, target in enumerate(targets):
        rest = list(options[row])
        correct = rest.pop(letters.index(frame[ANSWER].iat[row]))
        rng.shuffle(rest)
        rest.insert(int(target), correct)
        shuffled[row] = rest
    frame = frame.copy()
    frame[letters] = shuffled
    frame[ANSWER] = [letters[int(t)] for t in targets]
    return frame


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", str(text).casefold()).strip()


def _drop(frame: pd.DataFrame, rows: list[int], reason: str, details: list[str]) -> Drops:
    return [
        {
            "stage": "filter",
            "id": frame.at[row, ID],
            "source_id": frame.at[row, SOURCE_ID],
            "reason": reason,
            "detail": detail,
            "question": frame.loc[row].drop(CONTEXT).to_dict(),
        }
        for row, detail in zip(rows, details, strict=True)
    ]


def _keep(frame: pd.DataFrame, dropped: list[int]) -> pd.DataFrame:
    return frame.drop(index=dropped).reset_index(drop=True)


def _question_text(frame: pd.DataFrame) -> list[str]:
    """What near-duplicates are compared on: the question and its correct option."""
    letters = option_letters(frame.columns)
    correct = [
        frame.at[i, frame.at[i, ANSWER]] if frame.at[i, ANSWER] in letters else ""
        for i in frame.index
    ]
    return [f"{p} {c}".strip() for p, c in zip(frame[PROMPT], correct, strict=True)]


def remove_duplicates(
    frame: pd.DataFrame, encoder: Any | None, threshold: float
) -> tuple[pd.DataFrame, Drops]:
    """Drop exact repeats (normalised prompt), then embedding near-duplicates of earlier rows."""
    seen: dict[str, str] = {}
    rows, details = [], []
    for row, prompt in enumerate(frame[PROMPT]):
        key = _norm(prompt)
        if key in seen:
            rows.append(row)
            details.append(f"same prompt as {seen[key]}")
        else:
            seen[key] = frame.at[row, ID]
    drops = _drop(frame, rows, "duplicate_exact", details)
    frame = _keep(frame, rows)
    if encoder is None or len(frame) < 2:
        return frame, drops
    vectors = np.asarray(encoder.encode(_question_text(frame), normalize_embeddings=True))
    similarity = vectors @ vectors.T
    rows, details, kept = [], [], []
    for row in range(len(frame)):
        best = max(kept, key=lambda k: similarity[row, k], default=None)
        if best is not None and similarity[row, best] >= threshold:
            rows.append(row)
            details.append(f"cosine {similarity[row, best]:.3f} with {frame.at[best, ID]}")
        else:
            kept.append(row)
    return _keep(frame, rows), drops + _drop(frame, rows, "duplicate_near", details)


def _excluded_prompts(excluded: dict[str, pd.DataFrame]) -> tuple[list[str], list[str]]:
    prompts, origins = [], []
    for name, other in excluded.items():
        prompts += other[PROMPT].astype(str).tolist()
        origins += [f"{name} id={i}" for i in other[ID]]
    return prompts, origins


def _nearest(
    frame: pd.DataFrame, prompts: list[str], encoder: Any | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``frame``: the best prompt cosine to ``prompts`` and its index."""
    if encoder is None or not prompts or frame.empty:
        return np.full(len(frame), -1.0), np.zeros(len(frame), dtype=int)
    ours = np.asarray(encoder.encode(frame[PROMPT].tolist(), normalize_embeddings=True))
    theirs = np.asarray(encoder.encode(prompts, normalize_embeddings=True, batch_size=64))
    similarity = ours @ theirs.T
    return similarity.max(axis=1), similarity.argmax(axis=1)


def remove_leaks(
    frame: pd.DataFrame,
    excluded: dict[str, pd.DataFrame],
    encoder: Any | None,
    threshold: float,
) -> tuple[pd.DataFrame, Drops]:
    """Drop questions whose prompt matches, or embeds within ``threshold`` of, an excluded one."""
    if not excluded or frame.empty:
        return frame, []
    prompts, origins = _excluded_prompts(excluded)
    exact = {_norm(p): o for p, o in zip(prompts, origins, strict=True)}
    best_sim, best_at = _nearest(frame, prompts, encoder)
    rows, details = [], []
    for row, prompt in enumerate(frame[PROMPT]):
        if _norm(prompt) in exact:
            rows.append(row)
            details.append(f"same prompt as {exact[_norm(prompt)]}")
        elif best_sim[row] >= threshold:
            rows.append(row)
            details.append(f"cosine {best_sim[row]:.3f} with {origins[best_at[row]]}")
    return _keep(frame, rows), _drop(frame, rows, "leak", details)


def nearest_excluded(
    frame: pd.DataFrame, excluded: dict[str, pd.DataFrame], encoder: Any | None
) -> dict[str, Any] | None:
    """The kept question closest to any ``--exclude`` question (prompt cosine): the
    evidence that a training set and its test exam share no question."""
    prompts, origins = _excluded_prompts(excluded)
    if encoder is None or not prompts or frame.empty:
        return None
    best_sim, best_at = _nearest(frame, prompts, encoder)
    row = int(best_sim.argmax())
    return {
        "excluded": len(prompts),
        "cosine": round(float(best_sim[row]), 4),
        "id": str(frame.at[row, ID]),
        "prompt": str(frame.at[row, PROMPT]),
        "nearest": origins[best_at[row]],
        "nearest_prompt": prompts[best_at[row]],
    }


def _answer_index(frame: pd.DataFrame) -> np.ndarray:
    letters = option_letters(frame.columns)
    return frame[ANSWER].map(letters.index).to_numpy()


def filter_unanswerable(
    frame: pd.DataFrame, scorer: Scorer, confidence: float = 0.0
) -> tuple[pd.DataFrame, Drops]:
    """Keep questions whose labelled answer the scorer picks when it reads the passage,
    with p(label) >= ``confidence``."""
    if frame.empty:
        return frame, []
    probs = scorer.probabilities(frame, use_context=True)
    answer = _answer_index(frame)
    picked = probs.argmax(axis=1)
    p_answer = probs[np.arange(len(frame)), answer]
    letters = option_letters(frame.columns)
    rows = [int(r) for r in np.flatnonzero((picked != answer) | (p_answer < confidence))]
    details = [
        f"{scorer.name} with passage picks {letters[picked[r]]} (p={probs[r, picked[r]]:.2f}), "
        f"label {letters[answer[r]]}"
        + (f" (p={p_answer[r]:.2f} < {confidence:g})" if picked[r] == answer[r] else "")
        for r in rows
    ]
    return _keep(frame, rows), _drop(frame, rows, "unanswerable", details)


def filter_too_easy(
    frame: pd.DataFrame, scorer: Scorer, confidence: float
) -> tuple[pd.DataFrame, Drops]:
    """Drop questions the scorer answers without the passage with p >= ``confidence``."""
    if frame.empty:
        return frame, []
    probs = scorer.probabilities(frame, use_context=False)
    answer = _answer_index(frame)
    p_answer = probs[np.arange(len(frame)), answer]
    easy = (probs.argmax(axis=1) == answer) & (p_answer >= confidence)
    rows = [int(r) for r in np.flatnonzero(easy)]
    details = [f"{scorer.name} without passage: p(answer)={p_answer[r]:.2f}" for r in rows]
    return _keep(frame, rows), _drop(frame, rows, "too_easy", details)


def _trim_to_chance(
    flags: list[dict[str, Any]], ap: np.ndarray, keep: np.ndarray, chance: float
) -> list[dict[str, Any]]:
    """The largest-margin ``flags`` whose removal brings the mean ``ap`` of the kept
    rows down to ``chance`` (all of them if that is not enough)."""
    total, count, chosen = float(ap[keep].sum()), int(keep.sum()), []
    for flag in sorted(flags, key=lambda f: -f["margin"]):
        if count == 0 or total / count <= chance:
            break
        chosen.append(flag)
        total, count = total - ap[flag["row"]], count - 1
    return chosen


def filter_shortcuts(frame: pd.DataFrame, config: GenConfig) -> tuple[pd.DataFrame, Drops]:
    """Act on questions a shortcut in ``gen.audit_shortcuts`` answers by a clear margin:
    ``drop`` removes every one; ``rebalance`` removes the largest-margin ones only until
    that shortcut's MAP@3 on what is kept is down to chance. Reason ``shortcut_<name>``."""
    if config.audit_action == "report" or frame.empty:
        return frame, []
    answer = answer_index(frame)
    passages = context_passages(frame)
    chance = chance_map_at_3(len(option_letters(frame.columns)))
    claimed: dict[str, list[dict[str, Any]]] = {}
    taken: set[int] = set()
    for name in config.audit_shortcuts:
        if name == PASSAGE_OVERLAP and passages is None:
            continue
        scores = baseline_scores(frame, name, passages)
        flags = shortcut_flags(
            frame, name, scores, answer, config.audit_length_ratio, config.audit_overlap_margin
        )
        flags = [f for f in flags if f["row"] not in taken]
        if config.audit_action == "rebalance":
            keep = np.ones(len(frame), dtype=bool)
            keep[list(taken)] = False
            flags = _trim_to_chance(flags, tie_aware_ap(scores, answer), keep, chance)
        claimed[name] = flags
        taken |= {f["row"] for f in flags}
    drops: Drops = []
    for name, flags in claimed.items():
        drops += _drop(
            frame, [f["row"] for f in flags], f"shortcut_{name}", [f["detail"] for f in flags]
        )
    return _keep(frame, sorted(taken)), drops


def audit_frame(
    frame: pd.DataFrame, config: GenConfig, seed: int, empty: str = "no questions kept"
) -> dict[str, Any]:
    """The bias audit of ``frame`` for the manifest (flag counts, not the list:
    ``sciqa audit OUT --json FILE`` gives every flag)."""
    if frame.empty:
        return {"skipped": empty}
    report = audit_questions(
        frame,
        passages=context_passages(frame),
        length_ratio=config.audit_length_ratio,
        overlap_margin=config.audit_overlap_margin,
        seed=seed,
        skipped="no passage text in 'context'",
    )
    report.pop("flags")
    return report


def postprocess(
    frame: pd.DataFrame,
    config: GenConfig,
    seed: int,
    *,
    encoder: Any | None = None,
    scorer: Scorer | None = None,
    excluded: dict[str, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, Drops, dict[str, Any]]:
    """Run the enabled filters in order; return kept questions, drop records and counts."""
    counts: dict[str, Any] = {"valid": len(frame), "letters_before": letter_counts(frame)}
    drops: Drops = []
    if config.dedup:
        frame, dropped = remove_duplicates(frame, encoder, config.near_dup_threshold)
        drops += dropped
    frame, dropped = remove_leaks(frame, excluded or {}, encoder, config.near_dup_threshold)
    drops += dropped
    if config.answerability_filter and scorer is not None:
        frame, dropped = filter_unanswerable(frame, scorer, config.answerable_confidence)
        drops += dropped
    if config.too_easy_filter and scorer is not None:
        frame, dropped = filter_too_easy(frame, scorer, config.too_easy_confidence)
        drops += dropped
    frame, dropped = filter_shortcuts(frame, config)
    drops += dropped
    if config.max_questions is not None:
        # Not a drop (nothing is wrong with them): a 250-question set is the first 250 of
        # the 1,000-question one made from the same passages.
        counts["passed"], counts["max_questions"] = len(frame), config.max_questions
        frame = frame.iloc[: config.max_questions].reset_index(drop=True)
    # Last, so the letters of what is kept (not of what was generated) are balanced.
    if config.balance_letters and len(frame):
        frame = balance_letters(frame, seed)
    if excluded:
        counts["nearest_excluded"] = nearest_excluded(frame, excluded, encoder)
    counts["dropped_by_reason"] = dict(Counter(d["reason"] for d in drops).most_common())
    counts["kept"] = len(frame)
    counts["letters_after"] = letter_counts(frame)
    return frame, drops, counts
