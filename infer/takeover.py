"""One run's story per OUT_DIR: its run id, and how a run takes OUT_DIR over from the one
before it.

A run's id hashes what shapes its outputs: the questions file's bytes, each member
(checkpoint, weight, how it is encoded and run) and the ensemble settings. It is written
into ``manifest.json`` with what it is made of.

A run takes OUT_DIR over when its first member finishes, just before it writes that
member's outputs; until then OUT_DIR still holds the earlier run, whole and usable (a run
that fails early, or is killed in its first member, changes nothing there). Taking over:

- the earlier run was another one (another id, or no id: written before ids existed):
  its files move to ``OUT_DIR/previous/``, replacing an older ``previous/``;
- it was this same run (a resume after a kill): its files stay, except those that would
  describe more than this run has redone so far (``scores.json``, member logits); they
  come back from ``cache/`` as this run goes.

``cache/`` is never touched: its files are keyed by everything they depend on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infer.member import Members
from infer.models import ModelSpec
from sciqa.config import InferConfig
from sciqa.outdir import partial_dir, publish, recover
from sciqa.runs import CONFIG, LOGITS, MANIFEST, SCORES, SUBMISSION, input_digest

log = logging.getLogger(__name__)

PREVIOUS = "previous"  # OUT_DIR/previous/: the earlier run's files, moved aside
# A run's files in OUT_DIR; the manifest last, so that while any of them is still in
# OUT_DIR the manifest beside it says which run they belong to.
RUN_FILES = (SUBMISSION, SCORES, LOGITS, CONFIG, MANIFEST)
# The ensemble settings that change what a run writes; each member's own are in its key.
RUN_SETTINGS = (
    "ensemble",
    "tta",
    "time_budget",
    "budget_margin",
    "cascade_cheap",
    "cascade_fraction",
    "cascade_expensive",
)


@dataclass(frozen=True)
class RunId:
    """``value``: a short hash of ``parts``, what the run's outputs depend on."""

    value: str
    parts: dict[str, Any]

    @classmethod
    def of(
        cls, questions: Path, specs: list[ModelSpec], members: Members, cfg: InferConfig
    ) -> RunId:
        settings = cfg.model_dump(mode="json")
        parts: dict[str, Any] = {
            "questions": input_digest(questions),
            "members": [_member_part(spec, members) for spec in specs],
            "settings": {key: settings[key] for key in RUN_SETTINGS},
        }
        payload = json.dumps(parts, sort_keys=True).encode()
        return cls(hashlib.sha256(payload).hexdigest()[:16], parts)

    def manifest(self) -> dict[str, Any]:
        """What the manifest records: the id and what it is made of."""
        return {"run_id": self.value, "run_id_of": self.parts}


def _member_part(spec: ModelSpec, members: Members) -> dict[str, Any]:
    return {
        "name": spec.name,
        "weight": spec.weight,
        "checkpoint": spec.fingerprint(),
        "inputs": members.cache_key(spec).inputs,  # its encoding, dtype, prompt config
    }


def earlier_run(out_dir: Path) -> dict[str, Any]:
    """OUT_DIR's manifest; empty when there is no readable one."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def take_over(out_dir: Path, run_id: RunId) -> None:
    """Make OUT_DIR this run's before it writes its first output (see the module doc)."""
    previous = out_dir / PREVIOUS
    recover(previous)  # a swap of previous/ killed half-way
    present = [name for name in RUN_FILES if (out_dir / name).exists()]
    earlier = earlier_run(out_dir)
    if present and earlier.get("run_id") == run_id.value:
        _drop_unredone(out_dir)
        return
    staging = partial_dir(previous)  # OUT_DIR/.previous.partial
    if not present and not staging.exists():
        return
    # A leftover staging folder holds what a take-over killed half-way had moved: files
    # of the run whose manifest is still here (it moves last), or of the one before.
    staging.mkdir(exist_ok=True)
    for name in present:
        os.replace(out_dir / name, staging / name)
    replaced = previous.exists()
    publish(staging, previous)
    log.warning(
        "%s: an earlier run's files (%s) moved to %s%s",
        out_dir,
        _difference(earlier, run_id) if present else "left by an interrupted move",
        previous,
        ", replacing the older ones there" if replaced else "",
    )


def _difference(earlier: dict[str, Any], run_id: RunId) -> str:
    """What sets the earlier run apart from this one, in a few words."""
    parts = earlier.get("run_id_of")
    if not isinstance(parts, dict):
        return "a run without a run id"
    other = [key for key in run_id.parts if parts.get(key) != run_id.parts[key]]
    return "other " + " and ".join(other or ["run id"])


def _drop_unredone(out_dir: Path) -> None:
    """A resumed run: drop what it has not redone yet (it comes back from the cache)."""
    (out_dir / SCORES).unlink(missing_ok=True)
    for path in (out_dir / LOGITS).glob("*.npy"):
        path.unlink()
