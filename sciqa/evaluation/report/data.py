"""The numbers behind ``sciqa eval DIR`` and ``sciqa report``, computed from :class:`Evidence`.

Everything here is numpy/pandas and returns plain dicts, so the same figures go to the
terminal, to ``report.json`` and into the plots.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sciqa.evaluation.evidence import Evidence, Member
from sciqa.evaluation.intervals import (
    CONFIDENCE,
    N_RESAMPLES,
    SEED,
    Interval,
    average_precisions_from_logits,
    bootstrap_interval,
    paired_bootstrap,
)
from sciqa.metrics import softmax

RELIABILITY_BINS = 10  # equal-width bins of top-1 probability
Z95 = 1.959963984540054  # normal quantile of a two-sided 95% interval


def ci_dict(ci: Interval, seed: int) -> dict[str, Any]:
    """The interval as the JSON of ``sciqa eval`` writes it (``map_at_3_ci``)."""
    return {
        "low": ci.low,
        "high": ci.high,
        "confidence": ci.confidence,
        "n_resamples": ci.n_resamples,
        "seed": seed,
    }


def diff_dict(ci: Interval, seed: int) -> dict[str, Any]:
    return {"estimate": ci.estimate, **ci_dict(ci, seed), "questions": ci.n_questions}


def _top1(logits: np.ndarray) -> np.ndarray:
    # argmax keeps the first of tied maxima, as top3_letters' stable sort does
    return np.argmax(logits, axis=1)


def system_scores(
    ev: Evidence, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> list[dict[str, Any]]:
    """MAP@3 with its bootstrap interval and accuracy for each member and the ensemble.

    A member that scored only some questions (a cascade's expensive stage, a model the
    budget cut) is scored on those; ``questions`` says how many.
    """
    rows = []
    for system in ev.systems:
        scored = system.scored
        row: dict[str, Any] = {
            "model": system.name,
            "weight": system.weight,
            "questions": int(scored.sum()),
            "ensemble": system is ev.ensemble,
        }
        if scored.any():
            aps = average_precisions_from_logits(system.logits[scored], ev.answers[scored])
            ci = bootstrap_interval(aps, n_resamples=n_resamples, seed=seed)
            correct = _top1(system.logits[scored]) == ev.answers[scored]
            row.update(
                map_at_3=ci.estimate,
                map_at_3_ci=ci_dict(ci, seed),
                accuracy=float(correct.mean()),
            )
        rows.append(row)
    return rows


def best_member(ev: Evidence) -> Member | None:
    """The member with the highest MAP@3 among those that scored every question."""
    full = [m for m in ev.members if m.scored.all()]
    if not full:
        return None
    scores = [average_precisions_from_logits(m.logits, ev.answers).mean() for m in full]
    return full[int(np.argmax(scores))]


def ensemble_minus_best(
    ev: Evidence, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> dict[str, Any] | None:
    """Paired bootstrap of ensemble MAP@3 minus its best member's, on the same questions."""
    best = best_member(ev)
    if ev.ensemble is None or best is None or len(ev.members) < 2:
        return None
    scored = ev.ensemble.scored
    ens = average_precisions_from_logits(ev.ensemble.logits[scored], ev.answers[scored])
    one = average_precisions_from_logits(best.logits[scored], ev.answers[scored])
    ci = paired_bootstrap(ens, one, n_resamples=n_resamples, seed=seed)
    return {"best_member": best.name, **diff_dict(ci, seed)}


def verdict(diff: dict[str, Any] | None) -> str:
    """One sentence on whether the ensemble beats its best member."""
    if diff is None:
        return "No ensemble of two or more members to compare with its best member."
    where = (
        "the interval lies above 0: the ensemble beats its best member on these questions"
        if diff["low"] > 0
        else "the interval lies below 0: the best member alone does better"
        if diff["high"] < 0
        else "the interval includes 0: no evidence that the ensemble beats its best member"
    )
    return (
        f"Ensemble minus best member ({diff['best_member']}): {diff['estimate']:+.4f} MAP@3, "
        f"95% paired bootstrap interval {diff['low']:+.4f} to {diff['high']:+.4f} "
        f"over {diff['questions']} questions; {where}."
    )


def correct_probability(member: Member, answers: np.ndarray) -> np.ndarray:
    """Probability the member gives the correct option (NaN where it did not score)."""
    probs = softmax(member.logits)
    return probs[np.arange(len(answers)), answers]


def correlation(ev: Evidence) -> dict[str, Any] | None:
    """Spearman correlation of the members' probability of the correct option.

    Rank-based, so members on different scales (an LM's log-probabilities next to an
    encoder's logits) compare fairly; computed on the questions both members scored.
    High correlation = they find the same questions easy and hard: averaging them can
    gain little.
    """
    if len(ev.members) < 2:
        return None
    frame = pd.DataFrame({m.name: correct_probability(m, ev.answers) for m in ev.members})
    matrix = frame.corr(method="spearman", min_periods=3).to_numpy()
    wrong = {m.name: _top1(np.nan_to_num(m.logits, nan=-np.inf)) != ev.answers for m in ev.members}
    both_wrong = [
        [_share(wrong[a.name] & wrong[b.name], a.scored & b.scored) for b in ev.members]
        for a in ev.members
    ]
    return {
        "members": [m.name for m in ev.members],
        "spearman": [[None if np.isnan(v) else float(v) for v in row] for row in matrix],
        "both_wrong": both_wrong,
    }


def _share(hits: np.ndarray, rows: np.ndarray) -> float | None:
    """Share of ``rows`` where ``hits`` holds; None when no row qualifies."""
    return float(hits[rows].mean()) if rows.any() else None


def reliability(member: Member, answers: np.ndarray, bins: int = RELIABILITY_BINS) -> dict:
    """Top-1 probability against top-1 accuracy, per equal-width probability bin.

    ``ece`` is the expected calibration error: the question-weighted mean gap between
    a bin's mean confidence and its accuracy.
    """
    scored = member.scored
    probs = softmax(member.logits[scored])
    confidence = probs.max(axis=1)
    correct = _top1(member.logits[scored]) == answers[scored]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "questions": n,
                "confidence": float(confidence[inside].mean()) if n else None,
                "accuracy": float(correct[inside].mean()) if n else None,
            }
        )
    n = max(len(confidence), 1)
    ece = sum(
        r["questions"] / n * abs(r["confidence"] - r["accuracy"]) for r in rows if r["questions"]
    )
    return {
        "model": member.name,
        "bins": rows,
        "ece": float(ece),
        "mean_confidence": float(confidence.mean()) if len(confidence) else None,
        "accuracy": float(correct.mean()) if len(correct) else None,
    }


def wilson(successes: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion (sane at 0 and 1, unlike the normal one).

    >>> [round(x, 3) for x in wilson(5, 10)]
    [0.237, 0.763]
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return (float(centre - half), float(centre + half))


def by_letter(ev: Evidence, member: Member) -> list[dict[str, Any]]:
    """Per option letter: how often it is the answer, how often it is predicted first,
    and the top-1 accuracy on questions whose answer it is (position bias shows here)."""
    scored = member.scored
    top1 = _top1(member.logits[scored])
    answers = ev.answers[scored]
    aps = average_precisions_from_logits(member.logits[scored], answers)
    rows = []
    for i, letter in enumerate(ev.letters):
        has = answers == i
        n = int(has.sum())
        hits = int((top1[has] == i).sum())
        low, high = wilson(hits, n)
        rows.append(
            {
                "letter": letter,
                "questions": n,
                "answer_share": n / max(len(answers), 1),
                "predicted_share": float((top1 == i).mean()) if len(top1) else 0.0,
                "accuracy": hits / n if n else None,
                "accuracy_low": low,
                "accuracy_high": high,
                "map_at_3": float(aps[has].mean()) if n else None,
            }
        )
    return rows


def by_group(ev: Evidence, member: Member, column: str) -> list[dict[str, Any]]:
    """Top-1 accuracy (Wilson 95%) and MAP@3 per value of ``column`` (e.g. ``source``),
    largest groups first."""
    if column not in ev.groups:
        return []
    scored = member.scored
    values = ev.groups[column][scored]
    answers = ev.answers[scored]
    correct = _top1(member.logits[scored]) == answers
    aps = average_precisions_from_logits(member.logits[scored], answers)
    rows = []
    for value in pd.Series(values).value_counts().index:
        inside = values == value
        n = int(inside.sum())
        low, high = wilson(int(correct[inside].sum()), n)
        rows.append(
            {
                column: str(value),
                "questions": n,
                "accuracy": float(correct[inside].mean()),
                "accuracy_low": low,
                "accuracy_high": high,
                "map_at_3": float(aps[inside].mean()),
            }
        )
    return rows


def weights(ev: Evidence) -> list[dict[str, Any]] | None:
    """Each member's share of the ensemble (weights normalised to sum to 1)."""
    given = [(m.name, m.weight) for m in ev.members if m.weight is not None]
    total = sum(w for _, w in given)
    if len(ev.members) < 2 or not given or total <= 0:
        return None
    return [{"model": name, "weight": w, "share": w / total} for name, w in given]


def budget(ev: Evidence) -> dict[str, Any] | None:
    """infer's time-budget plans next to what each model really ran (from its manifest)."""
    if ev.kind != "infer" or not ev.manifest:
        return None
    m = ev.manifest
    plans = m.get("plans") or []
    rows = []
    for row in m.get("models", []):
        if row.get("model") == "ensemble":
            continue
        name = row["model"]
        rows.append(
            {
                "model": name,
                "weight": row.get("weight"),
                "status": row.get("status", "not run"),
                "first_plan": plans[0]["passes"].get(name) if plans else None,
                "last_plan": _last_plan(plans, name),
                "passes": row.get("passes", 0),
                "seconds": row.get("seconds"),
                "load_seconds": row.get("load_seconds"),
            }
        )
    budget_margin = (ev.config.get("infer") or {}).get("budget_margin")
    return {
        "time_budget_seconds": m.get("time_budget_seconds"),
        "budget_margin": budget_margin,
        "elapsed_seconds": m.get("elapsed_seconds"),
        "tta": m.get("tta"),
        "plans": plans,
        "models": rows,
    }


def _last_plan(plans: list[dict[str, Any]], name: str) -> int | None:
    for plan in reversed(plans):
        if name in plan.get("passes", {}):
            return plan["passes"][name]
    return None


def learning_curves(ev: Evidence) -> list[dict[str, Any]]:
    """Per train run and fold: eval MAP@3 and loss after each epoch (fold metrics.json)."""
    curves = []
    for run, folds in ev.folds.items():
        for fold, metrics in folds.items():
            epochs = metrics.get("epochs") or []
            curves.append(
                {
                    "run": run,
                    "fold": fold,
                    "epoch": [e.get("epoch") for e in epochs],
                    "map_at_3": [e.get("map_at_3") for e in epochs],
                    "eval_loss": [e.get("eval_loss") for e in epochs],
                    "best_epoch": metrics.get("best_epoch"),
                    "final_map_at_3": metrics.get("map_at_3"),
                    "n_valid": metrics.get("n_valid"),
                }
            )
    return curves


def fold_scores(
    ev: Evidence, *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> list[dict[str, Any]]:
    """MAP@3 with interval of each train run's folds, on the questions each held out."""
    rows = []
    for member in ev.members:
        folds = member.info.get("folds")
        if folds is None:
            continue
        for fold in sorted(set(folds.tolist())):
            inside = folds == fold
            aps = average_precisions_from_logits(member.logits[inside], ev.answers[inside])
            ci = bootstrap_interval(aps, n_resamples=n_resamples, seed=seed)
            rows.append(
                {
                    "model": member.name,
                    "fold": int(fold),
                    "questions": int(inside.sum()),
                    "map_at_3": ci.estimate,
                    "map_at_3_ci": ci_dict(ci, seed),
                }
            )
    return rows


def collect(ev: Evidence, *, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """Every number of the report, as one JSON-ready dict."""
    focus = ev.ensemble or ev.members[0]
    return {
        "kind": ev.kind,
        "sources": [str(s) for s in ev.sources],
        "questions": len(ev.ids),
        "options": ev.letters,
        "confidence": CONFIDENCE,
        "n_resamples": n_resamples,
        "seed": seed,
        "focus": focus.name,
        "ensemble_note": ev.ensemble_note,
        "systems": system_scores(ev, n_resamples=n_resamples, seed=seed),
        "ensemble_minus_best": ensemble_minus_best(ev, n_resamples=n_resamples, seed=seed),
        "folds": fold_scores(ev, n_resamples=n_resamples, seed=seed),
        "correlation": correlation(ev),
        "reliability": reliability(focus, ev.answers),
        "by_letter": by_letter(ev, focus),
        "by_source": by_group(ev, focus, "source"),
        "weights": weights(ev),
        "budget": budget(ev),
        "learning_curves": learning_curves(ev),
        "weights_fit": ev.manifest.get("weights_fit") if ev.kind == "infer" else None,
    }
