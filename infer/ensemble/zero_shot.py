"""Held-out logits for members that belong to no train run (``llm:NAME`` zero-shot).

``--weights auto|stack|select`` fits weights on out-of-fold logits. A train run has them
(``oof.parquet``); a zero-shot member never trained on anything, so its logits on *any*
labelled question are held out. This module scores such members on the questions the
runs' OOF covers (the labelled file of ``infer.oof_labels``, else the one a run's
manifest names, e.g. the ``--valid`` set), in a nested ``sciqa infer`` into
``OUT_DIR/oof/``: the same prompts, TTA and dtype as the main run, and its logits cache,
so a second run with the same member pays nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from infer.errors import InferError
from infer.models import ModelSpec
from sciqa.config import SciqaConfig
from sciqa.runs import LOGIT_IDS, LOGITS
from sciqa.schema import ID

OOF_DIR = "oof"  # OUT_DIR/oof/: the nested run that scores zero-shot members for the fit


def score_orphans(
    specs: list[ModelSpec], questions: Path, out_dir: Path, config: SciqaConfig
) -> dict[str, pd.DataFrame]:
    """Each orphan's logits on ``questions`` (id + one column per letter), by name."""
    from infer.commands import run_infer  # the command imports this module

    if any(not spec.arg for spec in specs):  # built by hand, not from a command line
        names = ", ".join(spec.name for spec in specs if not spec.arg)
        raise InferError(f"--weights: {names} has no model argument to score its OOF with")
    nested = config.model_copy(deep=True)
    # Only the members' own logits are read back: no fit, budget or cascade in the nest.
    nested.infer.weights = "equal"
    nested.infer.time_budget = None
    nested.infer.cascade_cheap = 0
    nested.infer.cascade_expensive = []
    nested_dir = out_dir / OOF_DIR
    run_infer(questions, [spec.arg for spec in specs], nested_dir, nested)
    ids = json.loads((nested_dir / LOGITS / LOGIT_IDS).read_text(encoding="utf-8"))
    frames = {}
    for spec in specs:
        logits = np.load(nested_dir / LOGITS / f"{spec.name}.npy")
        letters = [chr(ord("A") + i) for i in range(logits.shape[1])]
        frame = pd.DataFrame(logits, columns=letters)
        frame.insert(0, ID, [str(i) for i in ids])
        frames[spec.name] = frame
    return frames
