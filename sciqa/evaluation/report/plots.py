"""The report's PNG plots (matplotlib, Agg backend: no display, no browser).

Each function takes the dicts of :mod:`sciqa.evaluation.report.data` and writes one PNG, returning
its path, or None when there is nothing to draw (e.g. a correlation of one member).
Imported only by ``sciqa report``, so ``sciqa --help`` never loads matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from sciqa.io import atomic_path

MEMBER = "#4c72b0"
ENSEMBLE = "#dd8452"
MUTED = "#8c8c8c"
GOOD = "#55a868"
DPI = 110
WIDTH = 8.0  # inches: ~880 px at DPI, readable on a laptop without zooming

plt.rcParams.update(
    {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "svg.hashsalt": "sciqa",
    }
)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # Pinned metadata: the same numbers give the same bytes.
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def map_intervals(
    systems: list[dict[str, Any]], diff: dict[str, Any] | None, path: Path
) -> Path | None:
    """MAP@3 of each member and the ensemble as a point with its 95% bootstrap interval."""
    rows = [s for s in systems if "map_at_3" in s]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(WIDTH, 1.2 + 0.45 * len(rows)))
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, rows, strict=True):
        colour = ENSEMBLE if row["ensemble"] else MEMBER
        ci = row["map_at_3_ci"]
        ax.errorbar(
            row["map_at_3"],
            yi,
            xerr=[[row["map_at_3"] - ci["low"]], [ci["high"] - row["map_at_3"]]],
            fmt="o",
            color=colour,
            capsize=4,
            markersize=7,
            linewidth=2,
        )
        ax.annotate(
            f"{row['map_at_3']:.3f}  [{ci['low']:.3f}, {ci['high']:.3f}]  n={row['questions']}",
            (ci["high"], yi),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
        )
    if diff is not None:
        best = next(r for r in rows if r["model"] == diff["best_member"])
        ax.axvline(best["map_at_3"], color=MUTED, linestyle="--", linewidth=1, zorder=0)
    ax.set_yticks(y, [_short(r["model"]) for r in rows])
    lows = [r["map_at_3_ci"]["low"] for r in rows]
    highs = [r["map_at_3_ci"]["high"] for r in rows]
    span = max(highs) - min(lows) or 0.1
    ax.set_xlim(min(lows) - 0.05 * span, max(highs) + 0.75 * span)  # room for the labels
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= 1])  # MAP@3 lives in 0..1
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("MAP@3 (95% bootstrap interval over questions)")
    title = "MAP@3 per member and ensemble"
    if diff is not None:
        verdict = "above 0" if diff["low"] > 0 else "below 0" if diff["high"] < 0 else "includes 0"
        title += (
            f"\nensemble - best member ({_short(diff['best_member'], 24)}): "
            f"{diff['estimate']:+.4f} MAP@3\npaired 95% interval "
            f"[{diff['low']:+.4f}, {diff['high']:+.4f}]: {verdict}"
        )
    ax.set_title(title, loc="left")
    ax.grid(axis="y", visible=False)
    return _save(fig, path)


def correlation(corr: dict[str, Any] | None, path: Path) -> Path | None:
    """Heatmap of the members' Spearman correlation, and how often both are wrong."""
    if corr is None:
        return None
    names = [_short(n, 20) for n in corr["members"]]
    matrices = tuple(
        np.array([[np.nan if v is None else v for v in row] for row in corr[key]], dtype=float)
        for key in ("spearman", "both_wrong")
    )
    titles = ("Spearman r of p(correct option)", "share both wrong at top-1")
    size = max(3.2, 0.55 * len(names) + 2.0)
    fig, axes = plt.subplots(1, 2, figsize=(max(WIDTH, 2 * size), size))
    for ax, matrix, title, cmap, vmin in zip(
        axes, matrices, titles, ("viridis", "magma_r"), (-1.0, 0.0), strict=True
    ):
        image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=1.0)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.grid(False)
        ax.set_title(title)
        for i in range(len(names)):
            for j in range(len(names)):
                value = matrix[i, j]
                text = "-" if np.isnan(value) else f"{value:.2f}"
                light = image.norm(value) < 0.5 if cmap == "viridis" else image.norm(value) > 0.5
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="white" if light else "black")  # fmt: skip
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def reliability(rel: dict[str, Any], path: Path) -> Path:
    """Reliability diagram of the top-1 probability, with the confidence histogram."""
    bins = rel["bins"]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(WIDTH * 0.75, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], linestyle="--", color=MUTED, label="perfectly calibrated")
    filled = [b for b in bins if b["questions"]]
    width = bins[0]["high"] - bins[0]["low"]
    centres = [(b["low"] + b["high"]) / 2 for b in filled]
    top.bar(centres, [b["accuracy"] for b in filled], width=width * 0.9, color=ENSEMBLE,
            alpha=0.8, edgecolor="white", label="top-1 accuracy in the bin")  # fmt: skip
    top.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o-",
             color="black", markersize=4, label="mean confidence → accuracy")  # fmt: skip
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("top-1 accuracy")
    top.legend(loc="upper left", fontsize=9)
    top.set_title(
        f"Reliability of {_short(rel['model'])}'s top-1 probability\n"
        f"ECE {rel['ece']:.3f}, mean confidence {rel['mean_confidence']:.3f}, "
        f"accuracy {rel['accuracy']:.3f}",
        loc="left",
    )
    bottom.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["questions"] for b in bins],
               width=width * 0.9, color=MUTED)  # fmt: skip
    bottom.set_ylabel("questions")
    bottom.set_xlabel("top-1 probability (softmax of the scores)")
    return _save(fig, path)


def by_letter(rows: list[dict[str, Any]], model: str, path: Path) -> Path:
    """Accuracy per correct letter, and answer vs top-1 prediction shares per letter."""
    letters = [r["letter"] for r in rows]
    x = np.arange(len(letters))
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH, 3.6))
    acc = np.array([r["accuracy"] if r["accuracy"] is not None else np.nan for r in rows])
    err = np.array(
        [
            [
                a - r["accuracy_low"] if r["questions"] else 0
                for a, r in zip(acc, rows, strict=True)
            ],
            [
                r["accuracy_high"] - a if r["questions"] else 0
                for a, r in zip(acc, rows, strict=True)
            ],
        ]
    )
    left.bar(x, np.nan_to_num(acc), yerr=err, color=ENSEMBLE, capsize=3)
    for xi, r in zip(x, rows, strict=True):
        left.annotate(f"n={r['questions']}", (xi, 0.02), ha="center", fontsize=8, color="white"
                      if r["accuracy"] and r["accuracy"] > 0.1 else "black")  # fmt: skip
    left.set_xticks(x, letters)
    left.set_ylim(0, 1)
    left.set_xlabel("correct letter")
    left.set_ylabel("top-1 accuracy (Wilson 95%)")
    left.set_title(f"{_short(model)}: accuracy by answer letter", loc="left")
    w = 0.4
    right.bar(x - w / 2, [r["answer_share"] for r in rows], w, color=MUTED, label="is the answer")
    right.bar(x + w / 2, [r["predicted_share"] for r in rows], w, color=MEMBER,
              label="predicted first")  # fmt: skip
    right.axhline(1 / len(letters), color="black", linestyle=":", linewidth=1)
    right.set_xticks(x, letters)
    right.set_xlabel("letter")
    right.set_ylabel("share of questions")
    tallest = max([r["answer_share"] for r in rows] + [r["predicted_share"] for r in rows])
    right.set_ylim(0, tallest * 1.3)  # headroom for the legend
    right.legend(fontsize=9, ncol=2, loc="upper center")
    right.set_title("position bias: answers vs first picks", loc="left")
    return _save(fig, path)


def by_source(rows: list[dict[str, Any]], model: str, path: Path, top: int = 20) -> Path | None:
    """Top-1 accuracy (Wilson 95%) and MAP@3 per ``source``, the largest groups."""
    if not rows:
        return None
    rows = rows[:top]
    fig, ax = plt.subplots(figsize=(WIDTH, 1.2 + 0.42 * len(rows)))
    y = np.arange(len(rows))[::-1]
    acc = np.array([r["accuracy"] for r in rows])
    err = np.array(
        [acc - [r["accuracy_low"] for r in rows], [r["accuracy_high"] for r in rows] - acc]
    )
    ax.barh(y + 0.2, acc, 0.4, xerr=err, color=ENSEMBLE, capsize=3, label="top-1 accuracy")
    ax.barh(y - 0.2, [r["map_at_3"] for r in rows], 0.4, color=MEMBER, label="MAP@3")
    for yi, r in zip(y, rows, strict=True):
        ax.annotate(f"{r['accuracy']:.2f}", (r["accuracy_high"], yi + 0.2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)  # fmt: skip
        ax.annotate(f"{r['map_at_3']:.2f}", (r["map_at_3"], yi - 0.2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(y, [f"{_short(r['source'], 24)} (n={r['questions']})" for r in rows])
    ax.set_xlim(0, 1.08)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=9, frameon=False)
    ax.set_title(f"{_short(model)} by source", loc="left")
    ax.grid(axis="y", visible=False)
    return _save(fig, path)


def weights(rows: list[dict[str, Any]] | None, path: Path) -> Path | None:
    """Each member's share of the ensemble."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(WIDTH, 1.0 + 0.4 * len(rows)))
    y = np.arange(len(rows))[::-1]
    shares = [r["share"] for r in rows]
    ax.barh(y, shares, color=[MEMBER if s > 0 else MUTED for s in shares])
    for yi, r in zip(y, rows, strict=True):
        ax.annotate(f"{r['share']:.3f}", (r["share"], yi), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=9)  # fmt: skip
    ax.set_yticks(y, [_short(r["model"]) for r in rows])
    ax.set_xlim(0, max(shares) * 1.15 or 1)
    ax.set_xlabel("share of the ensemble (weights normalised to sum to 1)")
    ax.set_title("Ensemble weights", loc="left")
    ax.grid(axis="y", visible=False)
    return _save(fig, path)


def budget(plan: dict[str, Any] | None, path: Path) -> Path | None:
    """Passes planned vs run per model, and where the seconds of the budget went."""
    if plan is None or not plan["models"]:
        return None
    rows = plan["models"]
    names = [_short(r["model"], 22) for r in rows]
    x = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH * 1.15, 3.2 + 0.15 * len(rows)))
    w = 0.27
    tta = plan.get("tta") or 1
    first = [r["first_plan"] if r["first_plan"] is not None else tta for r in rows]
    last = [r["last_plan"] if r["last_plan"] is not None else tta for r in rows]
    left.bar(x - w, first, w, color=MUTED, label="first plan")
    left.bar(x, last, w, color=MEMBER, label="last plan")
    left.bar(x + w, [r["passes"] or 0 for r in rows], w, color=ENSEMBLE, label="ran")
    left.set_xticks(x, names, rotation=30, ha="right")
    left.set_ylabel("TTA passes")
    left.yaxis.get_major_locator().set_params(integer=True)
    left.set_ylim(0, max([*first, *last, 1]) * 1.35)  # headroom for the legend
    left.legend(fontsize=9, ncol=3, loc="upper center")
    planned = "no time budget: all passes planned" if not plan["plans"] else (
        f"{len(plan['plans'])} plan(s) made")  # fmt: skip
    left.set_title(f"Passes: plan vs run\n{planned}", loc="left", fontsize=10)

    start = 0.0
    for i, r in enumerate(rows):
        load = r["load_seconds"] or 0.0
        total = r["seconds"] or 0.0
        right.barh(0, load, left=start, color=MUTED, edgecolor="white")
        right.barh(0, max(total - load, 0), left=start + load, color=MEMBER if i % 2 else ENSEMBLE,
                   edgecolor="white")  # fmt: skip
        if total:
            right.annotate(names[i], (start + total / 2, 0.45), ha="center", fontsize=8,
                           rotation=30)  # fmt: skip
        start += total
    limit = plan.get("time_budget_seconds")
    if limit:
        right.axvline(limit, color="red", linestyle="--", label=f"budget {limit:.0f}s")
        margin = plan.get("budget_margin")
        if margin:
            right.axvline(limit * (1 - margin), color="red", linestyle=":", alpha=0.6,
                          label=f"usable {limit * (1 - margin):.0f}s")  # fmt: skip
    elapsed = plan.get("elapsed_seconds")
    if elapsed:
        right.axvline(elapsed, color="black", linewidth=1, label=f"elapsed {elapsed:.0f}s")
    if limit or elapsed:
        right.legend(fontsize=8, loc="upper right", ncol=3)
    right.set_ylim(-0.5, 1.9)  # headroom for names and legend
    right.set_yticks([])
    right.set_xlabel("seconds (grey: loading; models in the order listed)")
    title = "Where the time went\n" + (f"{elapsed:.0f}s elapsed" if elapsed else "")
    right.set_title(title, loc="left", fontsize=10)
    right.grid(axis="y", visible=False)
    return _save(fig, path)


def learning_curves(curves: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation MAP@3 after each epoch, per train run and fold."""
    curves = [c for c in curves if c["epoch"]]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(WIDTH * 0.75, 3.6))
    for c in curves:
        label = (
            f"{_short(c['run'], 16)} fold {c['fold']}" if len(curves) > 1 else f"fold {c['fold']}"
        )
        ax.plot(c["epoch"], c["map_at_3"], "o-", label=label, markersize=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MAP@3")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Learning curves (the best epoch is kept)", loc="left")
    return _save(fig, path)
