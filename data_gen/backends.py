"""How each kind of OpenAI-compatible server takes a JSON schema and sampling settings.

- openai: ``json_schema`` (strict), length keywords removed (its strict mode refuses them);
  no repetition penalty.
- vllm, llama-server, ollama, generic: ``json_schema`` with the whole schema; repetition
  penalty as vllm ``repetition_penalty`` / llama-server ``repeat_penalty`` (others: none).
- llama-cpp-python: ``{"type": "json_object", "schema": ...}``; ``repeat_penalty``.

``presence_penalty``/``frequency_penalty`` are OpenAI parameters every backend takes;
they are sent when non-zero, so a zero leaves the request (and its cache key) as before.
``auto`` reads ``owned_by`` from ``GET /models``.

>>> backend_for("http://localhost:8000/v1", ["vllm"])
'vllm'
>>> response_format("llama-cpp-python", "json_schema", {"type": "object"})
{'type': 'json_object', 'schema': {'type': 'object'}}
"""

from __future__ import annotations

import copy
from typing import Any

BACKENDS = ("openai", "vllm", "llama-server", "ollama", "llama-cpp-python", "generic")
# ``owned_by`` of the served models as each server reports it.
_OWNED_BY = {
    "vllm": "vllm",
    "llamacpp": "llama-server",
    "me": "llama-cpp-python",
    "library": "ollama",
    "ollama": "ollama",
    "openai": "openai",
    "system": "openai",
    "openai-internal": "openai",
}
_REPEAT_KEY = {"vllm": "repetition_penalty", "llama-server": "repeat_penalty"}
_REPEAT_KEY["llama-cpp-python"] = "repeat_penalty"
_LENGTHS = ("minLength", "maxLength")


def backend_for(base_url: str, owned_by: list[str]) -> str:
    """The backend behind ``base_url`` from its models' ``owned_by`` (``generic`` if unknown)."""
    if "api.openai.com" in base_url:
        return "openai"
    for owner in owned_by:
        if str(owner).lower() in _OWNED_BY:
            return _OWNED_BY[str(owner).lower()]
    return "generic"


def _without_lengths(schema: Any) -> Any:
    """OpenAI's strict mode refuses length keywords; gen checks them after the reply."""
    if isinstance(schema, dict):
        return {k: _without_lengths(v) for k, v in schema.items() if k not in _LENGTHS}
    if isinstance(schema, list):
        return [_without_lengths(v) for v in schema]
    return schema


def response_format(backend: str, fmt: str, schema: dict[str, Any] | None) -> dict | None:
    """The ``response_format`` field for ``fmt`` (json_schema/json_object/text)."""
    if fmt == "json_schema" and schema is not None:
        if backend == "llama-cpp-python":
            return {"type": "json_object", "schema": copy.deepcopy(schema)}
        if backend == "openai":
            schema = _without_lengths(schema)
        return {
            "type": "json_schema",
            "json_schema": {"name": "mcq", "strict": True, "schema": copy.deepcopy(schema)},
        }
    if fmt in ("json_schema", "json_object"):
        return {"type": "json_object"}
    return None


def describe_format(backend: str, fmt: str) -> str:
    """What the manifest records: ``json_schema``, ``json_object+schema``, ..."""
    if fmt == "json_schema" and backend == "llama-cpp-python":
        return "json_object+schema"
    return fmt


def sampling(
    backend: str,
    *,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    repetition_penalty: float | None = None,
) -> dict[str, Any]:
    """Penalty parameters the backend understands; unset ones are left out."""
    params: dict[str, Any] = {}
    if presence_penalty:
        params["presence_penalty"] = presence_penalty
    if frequency_penalty:
        params["frequency_penalty"] = frequency_penalty
    if repetition_penalty is not None and backend in _REPEAT_KEY:
        params[_REPEAT_KEY[backend]] = repetition_penalty
    return params
