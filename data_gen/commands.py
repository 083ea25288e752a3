"""``sciqa gen``: :func:`run_gen`, the stage's steps in order, and the summary it prints.

select passages (:mod:`~data_gen.passages`) -> jobs and their prompts
(:mod:`~data_gen.prompts`) -> ask the endpoint of :func:`data_gen.engine.serve_llm`, every
reply parsed and invalid ones re-asked (:mod:`~data_gen.generate`) -> questions -> filter
and audit (:mod:`~data_gen.postprocess`) -> write.

Writes OUT (sciqa schema, labelled, ``context`` = source passage): a .csv/.parquet/.jsonl
file, or without a suffix a ``datasets`` save_to_disk folder; beside it
``<OUT stem>.rejected.jsonl`` (every dropped reply or question with its reason), the
dataset card ``README.md`` (:mod:`~data_gen.dataset_card`), and ``config.yaml`` +
``manifest.json``. Requests are cached in ``<OUT stem>.cache.sqlite`` so a rerun resumes.

The five outputs always describe one run: they are written at the end into
``.<OUT name>.partial/`` and renamed into place, the manifest last (and the old manifest
removed first), so a kill leaves the previous run's files or no manifest, never a manifest
that vouches for another run's questions. One gen at a time writes OUT and, because
``config.yaml``/``manifest.json`` are shared by everything in OUT's folder, one at a time
writes into that folder (:class:`~sciqa.outdir.OutLock` on both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from data_gen.cache import ReplyCache
from data_gen.dataset_card import CARD, card_path, card_text, check_card
from data_gen.engine import Endpoint, serve_llm
from data_gen.generate import Asked, ask_questions, questions_frame, reply_counts
from data_gen.judge import LLMJudge
from data_gen.passages import read_passages, select_passages
from data_gen.postprocess import audit_frame, postprocess
from data_gen.prompts import Asking, load_templates, make_jobs, templates_path
from data_gen.scorers import (
    Scorer,
    check_scorer,
    load_encoder,
    make_scorer,
    needs_encoder,
    needs_scorer,
)
from sciqa.config import SciqaConfig
from sciqa.errors import SciqaError
from sciqa.evaluation.audit import one_line
from sciqa.hf_datasets import is_saved_folder
from sciqa.io import read_questions, table_format, write_questions, write_table, write_text
from sciqa.layouts import Layout
from sciqa.outdir import OutLock, check_out_file, fresh_partial, publish
from sciqa.runs import CONFIG, MANIFEST, write_run_files
from sciqa.schema import validate_questions


def rejected_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.rejected.jsonl")


def cache_path(out: Path, cache: Path | None) -> Path:
    """``gen.cache``, else ``<OUT stem>.cache.sqlite`` beside OUT."""
    return cache or out.with_name(f"{out.stem}.cache.sqlite")


def is_folder_out(out: Path) -> bool:
    """An OUT without a suffix is a ``datasets`` save_to_disk folder, else a table file."""
    return not out.suffix


def check_out(out: Path) -> Path:
    """OUT must be a table file path, or without a suffix a save_to_disk folder (new, or
    one to replace), in a folder that can exist and whose README.md, if any, is gen's:
    checked before anything is read or asked."""
    if is_folder_out(out):
        if out.is_file():
            raise SciqaError(
                f"{out}: --out is an existing file; an --out without a suffix names a "
                "datasets save_to_disk folder: give a new path, or a .csv/.parquet/.jsonl file"
            )
        if out.is_dir() and not is_saved_folder(out):
            raise SciqaError(
                f"{out}: --out is an existing folder but not a datasets save_to_disk folder; "
                "gen replaces OUT whole, so give a new path or a .csv/.parquet/.jsonl file"
            )
    else:
        out = check_out_file(out)
    if out.parent.exists() and not out.parent.is_dir():
        raise SciqaError(f"{out.parent}: is a file, so --out {out} cannot be created in it")
    if not is_folder_out(out):
        table_format(out)  # a bad suffix fails before any request is paid for
    check_card(out)
    return out


def run_gen(
    passages: Path,
    out: Path,
    config: SciqaConfig,
    *,
    excludes: Sequence[Path] = (),
    batch: bool = False,
    encoder: Any = None,
    scorer: Scorer | None = None,
) -> dict[str, Any]:
    """Generate, filter and write questions; returns the manifest's counts.

    ``encoder`` / ``scorer``: ready ones instead of loading ``models.embedding`` /
    ``gen.scorer`` when a step needs them.
    """
    check_out(out)
    with OutLock(out), OutLock(out.parent / MANIFEST):
        return _run(passages, out, config, excludes, batch, encoder, scorer)


def _run(
    passages: Path,
    out: Path,
    config: SciqaConfig,
    excludes: Sequence[Path],
    batch: bool,
    encoder: Any,
    scorer: Scorer | None,
) -> dict[str, Any]:
    started = time.monotonic()
    gen, seed = config.gen, config.seed
    excluded = {str(p): read_questions(p, layout=Layout.of(config)) for p in excludes}
    if scorer is None:
        check_scorer(gen)
    if encoder is None and needs_encoder(gen, excluding=bool(excludes)):
        encoder = load_encoder(config.models.embedding)
    # select -> jobs and prompts -> ask (each reply parsed; invalid ones re-asked)
    chosen, selection = select_passages(
        read_passages(passages), gen.n, gen, seed, source=str(passages), encoder=encoder
    )
    jobs = make_jobs(chosen, gen.questions_per_passage)
    letters = list(string.ascii_uppercase[: gen.n_options])
    asking = Asking(load_templates(gen.prompts, gen.reply_layout), letters, gen, seed)
    cache = ReplyCache(cache_path(out, gen.cache))
    with contextlib.closing(cache):
        with serve_llm(config.llm, config.models.llm) as endpoint:
            asked = asyncio.run(
                ask_questions(endpoint, config.llm, cache, jobs, asking, batch=batch)
            )
        generated_at = time.monotonic()
        # -> questions -> filter -> audit -> write
        frame = questions_frame(asked.outcomes, letters, f"gen:{endpoint.label}")
        # The writer's own shortcuts, before the filters pick: a small kept set (or none)
        # says little, the replies say what the LLM does.
        generated = audit_frame(frame, gen, seed, "no valid replies")
        if scorer is None and needs_scorer(gen) and len(frame):
            scorer = make_scorer(gen, encoder, config.causal_lm)
        if isinstance(scorer, LLMJudge):
            scorer.cache = cache  # verdicts survive a kill and serve a larger --n
        kept, drops, post = postprocess(
            frame, gen, seed, encoder=encoder, scorer=scorer, excluded=excluded
        )
    audits = {"audit": audit_frame(kept, gen, seed), "audit_generated": generated}
    seconds = {
        "generate": round(generated_at - started, 2),
        "postprocess": round(time.monotonic() - generated_at, 2),
    }
    counts = _manifest_counts(out, gen.cache, selection, asked, post, audits, endpoint, seconds)
    run_config = _as_run(config, endpoint)
    card = card_text(
        kept,
        out,
        run_config,
        counts,
        writer=endpoint.label,
        prompts=templates_path(gen.prompts, gen.reply_layout),
        passages=passages,
        excludes=list(excludes),
    )
    rejects = asked.rejections() + drops
    _publish(out, kept, rejects, run_config, [passages, *excludes], counts, card)
    return counts


def _publish(
    out: Path,
    kept: pd.DataFrame,
    rejects: list[dict[str, Any]],
    config: SciqaConfig,
    inputs: list[Path],
    counts: dict[str, Any],
    card: str,
) -> None:
    """OUT, its rejects, the card, ``config.yaml`` and ``manifest.json``, written aside in
    full then renamed beside OUT (a folder OUT swapped in whole). The old manifest goes
    first and the new one comes last, so a kill between the renames leaves no manifest
    rather than one describing another run."""
    staging = fresh_partial(out)
    try:
        _write_outputs(staging / out.name, kept, rejects, config.gen.source_license)
        write_text(card, staging / CARD)
        write_run_files(staging, "gen", config, inputs=inputs, extra=counts)
        (out.parent / MANIFEST).unlink(missing_ok=True)
        names = [rejected_path(out).name, CARD, CONFIG, MANIFEST]
        if is_folder_out(out):
            publish(staging / out.name, out)  # a folder is swapped in whole
        else:
            names.insert(0, out.name)
        for name in names:
            os.replace(staging / name, out.parent / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_outputs(
    out: Path, kept: pd.DataFrame, rejects: list[dict[str, Any]], license_: str
) -> None:
    """OUT (the kept questions) and ``<OUT stem>.rejected.jsonl`` (every drop)."""
    if is_folder_out(out):
        _save_to_disk(kept, out, license_)
    elif kept.empty:  # the schema check refuses an empty file; write the header alone
        write_table(kept, out)
    else:
        write_questions(kept, out, require_answer=True)
    write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects), rejected_path(out)
    )


def _save_to_disk(kept: pd.DataFrame, folder: Path, license_: str) -> None:
    """The questions as a ``datasets`` save_to_disk folder that describes itself."""
    from datasets import Dataset

    if not kept.empty:
        kept = validate_questions(kept, str(folder), require_answer=True)
    dataset = Dataset.from_pandas(kept, preserve_index=False)
    dataset.info.license = license_
    dataset.info.description = f"sciqa gen questions; the dataset card is ../{CARD}"
    dataset.save_to_disk(str(folder))


def _manifest_counts(
    out: Path,
    cache: Path | None,
    selection: dict[str, int],
    asked: Asked,
    post: dict[str, Any],
    audits: dict[str, Any],
    endpoint: Endpoint,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """What ``manifest.json`` records of a run (and ``run_gen`` returns)."""
    return {
        "selection": selection,
        "replies": reply_counts(asked.outcomes),
        "postprocess": post,
        **audits,
        "usage": asked.usage,
        "stopped": asked.stopped,
        "endpoint": {"base_url": endpoint.base_url, "model": endpoint.model},
        "structured_output": asked.structured_output,
        "outputs": {
            "questions": str(out),
            "rejected": str(rejected_path(out)),
            "card": str(card_path(out)),
            "cache": str(cache_path(out, cache)),
        },
        "seconds": seconds,
    }


def _as_run(config: SciqaConfig, endpoint: Endpoint) -> SciqaConfig:
    """``config`` as the run used it, for ``config.yaml``: with the endpoint's concurrency
    (1 for ``transformers serve``); the loaded config itself is not changed."""
    if endpoint.concurrency == config.llm.concurrency:
        return config
    llm = config.llm.model_copy(update={"concurrency": endpoint.concurrency})
    return config.model_copy(update={"llm": llm})


def summary(counts: dict[str, Any]) -> str:
    """The few lines ``sciqa gen`` prints: what was asked, answered, rejected and kept."""
    sel, rep, post, use = (
        counts["selection"],
        counts["replies"],
        counts["postprocess"],
        counts["usage"],
    )
    lines = [
        f"passages: {sel['passages']} read, {sel['science']} eligible, {sel['selected']} used",
        f"requests: {use['answered']} new, {use['cache_hits']} from cache, "
        f"{use['retries']} retried; tokens {use['prompt_tokens']}+{use['completion_tokens']}, "
        f"cost ${use['cost']:.4f}",
        f"format: {_format_line(counts.get('structured_output'))}",
        f"replies: {rep['replies']} for {rep['jobs']} questions, {rep['valid']} valid; rejected "
        + (", ".join(f"{k} {v}" for k, v in rep["rejected_by_reason"].items()) or "none"),
        "dropped: "
        + (", ".join(f"{k} {v}" for k, v in post["dropped_by_reason"].items()) or "none"),
        f"kept: {post['kept']} questions -> {counts['outputs']['questions']}; answer letters "
        + " ".join(f"{k}={v}" for k, v in post["letters_after"].items()),
    ]
    if "passed" in post:
        short = post["passed"] < post["max_questions"]
        lines.append(
            f"gen.max_questions {post['max_questions']}: kept the first {post['kept']} of the "
            f"{post['passed']} that passed" + ("; raise --n for more" if short else "")
        )
    near = post.get("nearest_excluded")
    if near:
        lines.append(
            f"nearest to --exclude: cosine {near['cosine']:.3f}, {near['id']} vs "
            f"{near['nearest']} ({near['excluded']} excluded questions)"
        )
    for key, what in (("audit_generated", "valid replies, before filters"), ("audit", "kept")):
        audit = counts.get(key)
        if audit is not None:
            text = audit["skipped"] if "skipped" in audit else one_line(audit)
            lines.append(f"audit ({what}): {text.removeprefix('audit: ')}")
    if counts["stopped"]:
        lines.append(f"stopped early: {counts['stopped']}; rerun to continue (replies are cached)")
    if rep["unanswered"] and not counts["stopped"]:
        lines.append(f"{rep['unanswered']} questions got no reply; rerun to retry them")
    return "\n".join(lines)


def _format_line(structured: dict[str, Any] | None) -> str:
    if not structured:
        return "unknown"
    line = f"{structured['used']} ({structured['backend']})"
    if structured["downgrades"]:
        line += f", downgraded from {structured['requested']}"
    return line
