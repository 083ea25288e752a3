"""Errors that the CLI turns into one-line messages instead of tracebacks."""


class SciqaError(Exception):
    """Bad input or configuration that the user can fix; the message says what to do."""


class SchemaError(SciqaError, ValueError):
    """A questions/submission file does not match the documented columns."""


class ConfigError(SciqaError, ValueError):
    """A config file or CLI override is invalid."""


class AssetError(SciqaError, RuntimeError):
    """A default offline model or corpus cannot be found."""
