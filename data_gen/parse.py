"""Turn an LLM reply into a validated question, or a one-word reason it was rejected.

The reply is a JSON object ``{"question": ..., "A": ..., ..., "answer": "B"}`` with the
configured number of option letters (``gen.reply_layout = letters``), or ``{"question": ...,
"correct_answer": ..., "wrong_answer_1": ..., ...}`` (``answer_first``): the model writes
the key right after the question, before any distractor, instead of naming a letter after
writing them all (a 1.5B writer's letters often point at a distractor). Either layout is
read whichever was asked for. Nothing is ``eval()``-ed: replies are read with
``json.loads`` (after a tolerant extraction of the first balanced ``{...}`` for plain-text
replies) and validated by :class:`GeneratedQuestion`.

>>> parse_reply('Sure! {"question": "Q?", "A": "1", "B": "2", "answer": "B"}', ["A", "B"])
GeneratedQuestion(question='Q?', options=['1', '2'], answer='B')
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sciqa.schema import option_letters

# "all of the above", "none of these", "both A and B": options the prompt forbids.
_META_OPTION = re.compile(
    r"\b(all|none|both|neither)\b.*\b(above|these|of the options)\b|\bboth [a-e] and [a-e]\b",
    re.IGNORECASE,
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
CORRECT = "correct_answer"  # answer_first: the key's text, written first
WRONG = "wrong_answer_{}"  # answer_first: distractor 1..n-1
Layout = Literal["letters", "answer_first"]


class Rejected(ValueError):
    """A reply that cannot become a question; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _reject(reason: str, detail: str) -> PydanticCustomError:
    return PydanticCustomError(reason, detail)


@dataclass(frozen=True)
class ReplySpec:
    """Limits on the reply's strings, sent in the JSON schema and checked here as well
    (a server without structured output does not enforce them)."""

    max_question_chars: int | None = None
    max_option_chars: int | None = None
    question_pattern: str | None = None  # JSON-schema ``pattern``: a search, ^...$ to anchor
    option_pattern: str | None = None
    layout: Layout = "letters"  # the reply's keys (module doc)

    @classmethod
    def from_config(cls, gen: Any) -> ReplySpec:
        return cls(
            gen.max_question_chars,
            gen.max_option_chars,
            gen.question_pattern,
            gen.option_pattern,
            gen.reply_layout,
        )

    def field(self, kind: str) -> dict[str, Any]:
        """The JSON schema of the question (``kind="question"``) or of one option."""
        limit = self.max_question_chars if kind == "question" else self.max_option_chars
        pattern = self.question_pattern if kind == "question" else self.option_pattern
        schema: dict[str, Any] = {"type": "string", "minLength": 1}
        if limit is not None:
            schema["maxLength"] = limit
        if pattern is not None:
            schema["pattern"] = pattern
        return schema

    def check(self, kind: str, value: str, name: str) -> None:
        """Raise the rejection a schema-enforcing server would have prevented."""
        limit = self.max_question_chars if kind == "question" else self.max_option_chars
        pattern = self.question_pattern if kind == "question" else self.option_pattern
        if limit is not None and len(value) > limit:
            raise _reject("too_long", f"{name} has {len(value)} characters (at most {limit})")
        if pattern is not None and not re.search(pattern, value):
            raise _reject("pattern_mismatch", f"{name} does not match the pattern {pattern!r}")


NO_LIMITS = ReplySpec()


class GeneratedQuestion(BaseModel):
    """One question as the LLM wrote it; ``context={"letters": [...]}`` sets the options."""

    question: str
    options: list[str]
    answer: str

    @field_validator("question")
    @classmethod
    def _non_empty(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise _reject("empty_prompt", "the question is empty")
        info.context.get("spec", NO_LIMITS).check("question", value, "the question")
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: list[str], info: ValidationInfo) -> list[str]:
        letters = info.context["letters"]
        value = [str(v).strip() for v in value]
        if len(value) != len(letters):
            raise _reject("wrong_option_count", f"{len(value)} options instead of {len(letters)}")
        if not all(value):
            raise _reject("empty_option", "an option is empty")
        spec = info.context.get("spec", NO_LIMITS)
        duplicate = _first_duplicate(value, letters, spec.layout)
        if duplicate:
            raise _reject("duplicate_options", duplicate)
        if any(_META_OPTION.search(v) for v in value):
            raise _reject("meta_option", 'an option is "all/none of the above"-like')
        for letter, option in zip(letters, value, strict=True):
            spec.check("option", option, f"option {letter}")
        return value

    @model_validator(mode="after")
    def _answer_is_letter(self, info: ValidationInfo) -> GeneratedQuestion:
        letters = info.context["letters"]
        self.answer = self.answer.strip().rstrip(".)").upper()
        if self.answer not in letters:
            raise _reject(
                "answer_not_a_letter", f"answer {self.answer!r} is not one of {', '.join(letters)}"
            )
        return self


def _first_duplicate(
    options: list[str], letters: list[str], layout: Layout = "letters"
) -> str | None:
    """Which option repeats which, worded for the re-ask (the model is told what to fix).
    An answer_first writer never saw the letters sciqa placed its answers at, so it is
    told the text instead.

    >>> _first_duplicate(["Iron", "Gold", "iron"], ["A", "B", "C"])
    'options A and C are the same ("iron"); write a different option C'
    >>> _first_duplicate(["Iron", "Gold", "iron"], ["A", "B", "C"], "answer_first")
    'two answers are the same ("iron"); write a different wrong answer'
    """
    seen: dict[str, str] = {}
    for letter, option in zip(letters, options, strict=True):
        key = option.casefold()
        if key in seen:
            same = f'("{option[:60]}")'
            if layout == "answer_first":
                return f"two answers are the same {same}; write a different wrong answer"
            return (
                f"options {seen[key]} and {letter} are the same {same}; "
                f"write a different option {letter}"
            )
        seen[key] = letter
    return None


def json_schema(letters: list[str], spec: ReplySpec = NO_LIMITS) -> dict[str, Any]:
    """The strict JSON schema sent as ``response_format`` (json_schema mode); its key
    order is the order a constrained decoder writes them in."""
    properties: dict[str, Any] = {"question": spec.field("question")}
    if spec.layout == "answer_first":
        properties[CORRECT] = spec.field("option")
        properties.update({WRONG.format(i): spec.field("option") for i in range(1, len(letters))})
    else:
        properties.update({letter: spec.field("option") for letter in letters})
        properties["answer"] = {"type": "string", "enum": list(letters)}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def example_reply(letters: list[str], layout: Layout = "letters") -> str:
    """The reply shape shown to the model in the prompt."""
    if layout == "answer_first":
        wrong = {WRONG.format(i): "..." for i in range(1, len(letters))}
        return json.dumps({"question": "...", CORRECT: "..."} | wrong)
    example = {"question": "..."} | {letter: "..." for letter in letters}
    return json.dumps(example | {"answer": letters[0]})


def _answer_first(question: str, correct: Any, wrong: list[Any]) -> tuple[list[Any], str]:
    """Options with the key at a letter drawn from the question's text: the same reply
    always gives the same question (the cache replays it), and keys spread over the
    letters before ``gen.balance_letters`` evens them out."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    at = int.from_bytes(digest[:8], "big") % (len(wrong) + 1)
    options = [*wrong[:at], correct, *wrong[at:]]
    return options, chr(ord("A") + at)


def extract_json(text: str) -> Any:
    """Parse ``text`` as JSON, else the first balanced ``{...}`` inside it (fences ok)."""
    text = text.strip()
    fenced = _FENCE.search(text)
    candidates = [text] + ([fenced.group(1).strip()] if fenced else [])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    start = text.find("{")
    while start != -1:
        end = _balanced_end(text, start)
        if end is not None:
            try:
                return json.loads(text[start : end + 1])
            except ValueError:
                pass
        start = text.find("{", start + 1)
    raise Rejected("not_json", "no JSON object found in the reply")


def _balanced_end(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``start``, skipping braces inside strings."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _normalise(data: Any, letters: list[str]) -> dict[str, Any]:
    """Map the reply's keys onto ``question/options/answer`` (case-insensitive keys)."""
    if not isinstance(data, dict):
        raise Rejected("not_json", f"reply is a JSON {type(data).__name__}, not an object")
    keys = {str(k).strip().casefold(): v for k, v in data.items()}
    if isinstance(keys.get("options"), dict):  # {"options": {"A": ..}} nesting
        keys |= {str(k).strip().casefold(): v for k, v in keys["options"].items()}
    question = next((keys[k] for k in ("question", "prompt") if k in keys), None)
    if question is not None and CORRECT in keys:
        wrong = [keys[k] for k in sorted(keys, key=_wrong_number) if _wrong_number(k)]
        options, answer = _answer_first(str(question), keys[CORRECT], wrong)
        return {"question": str(question), "options": options, "answer": answer}
    if any(_wrong_number(k) for k in keys) and "answer" not in keys:
        raise Rejected("missing_field", f"missing {CORRECT}")
    if question is None or "answer" not in keys:
        missing = [
            n for n, v in (("question", question), ("answer", keys.get("answer"))) if v is None
        ]
        raise Rejected("missing_field", f"missing {', '.join(missing)}")
    # Every letter key present, contiguous from A: six options means F is there too.
    present = [keys[letter.casefold()] for letter in option_letters([k.upper() for k in keys])]
    if isinstance(keys.get("options"), list):
        present = keys["options"]
    if not present:
        raise Rejected("missing_field", f"missing options {', '.join(letters)}")
    return {"question": str(question), "options": present, "answer": str(keys["answer"])}


def _wrong_number(key: str) -> int:
    """``wrong_answer_3`` -> 3; 0 for any other key."""
    prefix = WRONG.format("")
    tail = key[len(prefix) :] if key.startswith(prefix) else ""
    return int(tail) if tail.isdigit() and int(tail) > 0 else 0


def parse_reply(text: str, letters: list[str], spec: ReplySpec = NO_LIMITS) -> GeneratedQuestion:
    """Validated question from a reply's text; raises :class:`Rejected` with the reason."""
    data = _normalise(extract_json(text), letters)
    try:
        return GeneratedQuestion.model_validate(data, context={"letters": letters, "spec": spec})
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = first["type"] if first["type"] in _REASONS else "invalid_field"
        raise Rejected(reason, first["msg"]) from None


_REASONS = {
    "empty_prompt",
    "wrong_option_count",
    "empty_option",
    "duplicate_options",
    "meta_option",
    "answer_not_a_letter",
    "too_long",
    "pattern_mismatch",
}
