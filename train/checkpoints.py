"""Which checkpoint a fold resumes from: the newest *complete* ``checkpoint-*``.

A kill (SIGKILL, the OOM killer, a pre-empted job) while the Trainer writes
``checkpoint-N`` leaves a folder that transformers' ``get_last_checkpoint`` still picks,
and every rerun then dies loading it. The Trainer writes a checkpoint's weights, then the
optimizer, scheduler and RNG states, then ``trainer_state.json`` last; so a complete one
has a trainer state that parses, weights whose headers say they are whole
(:mod:`sciqa.weights`) and the optimizer and scheduler states that resuming loads.

A torn one is moved into ``torn_dir`` (``fold_<i>/torn-checkpoints/``: outside the
folder whose checkpoints the Trainer rotates and a finished fold deletes, so it stays
for a look) with a warning naming it, and the fold resumes from the complete one before
it, or from the start.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from sciqa.weights import file_problem, folder_problem, weight_files

log = logging.getLogger(__name__)
STATE = "trainer_state.json"
# Resuming loads these too (save_only_model is off); without them it fails or, for the
# scheduler, silently restarts the learning-rate schedule.
NEEDED_STATES = ("optimizer.pt", "scheduler.pt")
# transformers' get_last_checkpoint pattern: checkpoint-<global step>
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when it is complete."""
    state = folder / STATE
    if not state.is_file():
        return f"no {STATE}"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STATE} is cut short or not a trainer state"
    if not weight_files(folder):
        return "no weights file"
    found = folder_problem(folder)
    if found is not None:
        return f"{found[0].name}: {found[1]}"
    states = [folder / name for name in NEEDED_STATES]
    others = sorted({*folder.glob("*.pt"), *folder.glob("*.pth")} - set(states))
    for file in [*states, *others]:
        if not file.is_file():
            return f"no {file.name}"
        problem = file_problem(file)
        if problem is not None:
            return f"{file.name}: {problem}"
    return None


def _checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-<step>`` folders of ``output_dir``, newest (highest step) first."""
    found = [p for p in output_dir.iterdir() if _NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name)[1]), reverse=True)


def set_aside(folder: Path, torn_dir: Path) -> Path:
    """Move ``folder`` into ``torn_dir`` under a name not taken yet; returns where."""
    torn_dir.mkdir(parents=True, exist_ok=True)
    target, count = torn_dir / folder.name, 1
    while target.exists():  # torn at the same step by an earlier run too
        count += 1
        target = torn_dir / f"{folder.name}-{count}"
    folder.rename(target)
    return target


def resume_point(output_dir: Path, torn_dir: Path, label: str) -> str | None:
    """The newest complete ``checkpoint-*`` under ``output_dir`` (said in the log), or
    None; torn ones newer than it are moved into ``torn_dir``, each with a warning."""
    if not output_dir.is_dir():
        return None
    torn = 0
    for folder in _checkpoints(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            log.info("%s: resuming from %s", label, folder)
            return str(folder)
        try:
            moved = set_aside(folder, torn_dir)
        except FileNotFoundError:  # another node sharing the folder moved it first
            continue
        torn += 1
        log.warning(
            "%s: %s is incomplete (%s), a save cut short by a kill; moved to %s and not "
            "used (delete it once you no longer need it)",
            label,
            folder,
            problem,
            moved,
        )
    if torn:
        log.warning(
            "%s: no complete checkpoint left in %s; training from the start", label, output_dir
        )
    return None
