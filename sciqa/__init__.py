"""sciqa core: question schema, MAP@3, config, I/O and the ``sciqa`` CLI.

Stages (``data_gen``, ``retrieval``, ``train``, ``infer``) import from here and never
from each other. Names load lazily so ``import sciqa`` (and ``sciqa --help``) is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "map_at_3": "sciqa.metrics",
    "accuracy": "sciqa.metrics",
    "top3_letters": "sciqa.metrics",
    "read_questions": "sciqa.io",
    "write_questions": "sciqa.io",
    "read_table": "sciqa.io",
    "write_table": "sciqa.io",
    "validate_questions": "sciqa.schema",
    "option_letters": "sciqa.schema",
    "read_submission": "sciqa.submission",
    "write_submission": "sciqa.submission",
    "make_submission": "sciqa.submission",
    "score_submission": "sciqa.evaluation.evaluate",
    "load_config": "sciqa.config",
    "SciqaConfig": "sciqa.config",
    "SciqaError": "sciqa.errors",
    "SchemaError": "sciqa.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sciqa' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
