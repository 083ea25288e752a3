"""``train.report_to``: the HF Trainer's own tracker integrations, kept local and offline.

Logs go under ``RUN_DIR/tracking/`` (TensorBoard event files per fold, an MLflow file
store), unless the user points the trackers elsewhere with their usual environment
variables (``TENSORBOARD_LOGGING_DIR``, ``MLFLOW_TRACKING_URI``). Telemetry is switched
off before a tracker is imported, so a training run never reaches the network.

::

    sciqa train q.csv --out runs/x --set train.report_to=tensorboard,mlflow
    tensorboard --logdir runs/x/tracking/tensorboard
    mlflow ui --backend-store-uri runs/x/tracking/mlruns    # needs the full mlflow package
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

from sciqa.errors import ConfigError

TRACKING = "tracking"  # RUN_DIR/tracking/
EXTRA = "track"  # the pyproject extra with the trackers we test
# What to install for each tracker; ours come with the [track] extra.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}
OFFLINE = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow >= 3.5 usage telemetry
    "DO_NOT_TRACK": "true",  # the cross-tool opt-out MLflow also honours
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",  # no background thread outliving the fold
}
EXPERIMENT = "sciqa"  # MLflow experiment name unless MLFLOW_EXPERIMENT_NAME is set


def active(report_to: list[str]) -> list[str]:
    return [name for name in report_to if name != "none"]


def check_trackers(report_to: list[str]) -> None:
    """Fail before training when a tracker is unknown to transformers or not installed."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in active(report_to):
        if name not in INTEGRATION_TO_CALLBACK:
            known = ", ".join(sorted(INTEGRATION_TO_CALLBACK))
            raise ConfigError(
                f"train.report_to: unknown tracker {name!r}; transformers knows {known}"
            )
        packages = PACKAGES.get(name, (name,))
        if not any(importlib.util.find_spec(p) is not None for p in packages):
            how = (
                f"pip install -e '.[{EXTRA}]' (make install does)"
                if name in PACKAGES
                else f"pip install {name}"
            )
            raise ConfigError(f"train.report_to: {name} is not installed; {how}")


@contextlib.contextmanager
def tracking_env(report_to: list[str], run_dir: Path, run_name: str) -> Iterator[None]:
    """Environment for one fold's Trainer: local log locations, telemetry off.

    Set only for the duration of the fold and restored after, so folds (and tests) in
    one process never write into each other's stores. A log location the user set
    already wins; telemetry is off whatever was set.
    """
    names = active(report_to)
    wanted: dict[str, str] = dict(OFFLINE) if names else {}
    base = run_dir.resolve() / TRACKING
    if "tensorboard" in names and "TENSORBOARD_LOGGING_DIR" not in os.environ:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(base / "tensorboard" / run_name)
    if "mlflow" in names:
        if "MLFLOW_TRACKING_URI" not in os.environ:
            (base / "mlruns").mkdir(parents=True, exist_ok=True)
            wanted["MLFLOW_TRACKING_URI"] = (base / "mlruns").as_uri()
            # MLflow >= 3.7 refuses the file store unless asked: its database stores need
            # SQLAlchemy and a server-side install that mlflow-skinny leaves out.
            wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"
        if "MLFLOW_EXPERIMENT_NAME" not in os.environ:
            wanted["MLFLOW_EXPERIMENT_NAME"] = EXPERIMENT
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
