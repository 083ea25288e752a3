"""The infer stage's user-fixable errors (the CLI prints them as one line, exit 1)."""

from sciqa.errors import SciqaError


class InferError(SciqaError):
    """Bad model dirs, weights, budget or questions for ``sciqa infer``."""


class BudgetError(InferError):
    """The time budget cannot fit even one model; nothing was written."""
