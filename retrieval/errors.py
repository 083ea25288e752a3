"""What goes wrong in ``sciqa index`` / ``sciqa retrieve`` that the user can fix."""

from sciqa.errors import SciqaError


class CorpusError(SciqaError):
    """The corpus is missing, unreadable, or has no usable text."""


class IndexDirError(SciqaError):
    """An index folder is incomplete, of another format, or built with another model."""


class RetrievalInputError(SciqaError):
    """Bad retrieval arguments: k out of range, bad templates, no retriever enabled."""
