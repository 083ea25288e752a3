"""What is asked: a job per question to write, its chat messages and its parameters.

Each job is one (passage, sample) pair; sample ``k`` of a passage differs from the others
by its ``seed`` parameter, so every job has its own cache key. The messages are rendered
from the templates file (``configs/gen_prompts.yaml`` by default): ``system``, ``user``,
optional ``few_shot`` turns and the ``reask`` message sent after an invalid reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from data_gen.parse import Layout, example_reply
from data_gen.passages import PASSAGE_ID, TEXT, TITLE
from sciqa.config import DEFAULT, GenConfig
from sciqa.errors import SciqaError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_TEMPLATES = CONFIGS / "gen_prompts.yaml"
# gen.reply_layout -> the templates gen.prompts = default means; their example reply and
# few-shot turn show that layout's keys.
LAYOUT_TEMPLATES = {
    "letters": DEFAULT_TEMPLATES,
    "answer_first": CONFIGS / "gen_prompts_answer_first.yaml",
}
REQUIRED = ("system", "user", "reask")

Message = dict[str, str]


@dataclass(frozen=True)
class Job:
    passage_id: str
    title: str
    text: str
    sample: int  # which of the passage's questions_per_passage

    @property
    def question_id(self) -> str:
        return f"gen-{self.passage_id}-{self.sample}"


def make_jobs(passages: pd.DataFrame, per_passage: int) -> list[Job]:
    return [
        Job(str(row[PASSAGE_ID]), str(row[TITLE]), str(row[TEXT]), sample)
        for _, row in passages.iterrows()
        for sample in range(per_passage)
    ]


def request_params(gen: GenConfig, seed: int, job: Job) -> dict[str, Any]:
    """Generation parameters; ``seed`` differs per sample so each has its own cache key."""
    return {
        "temperature": gen.temperature,
        "max_tokens": gen.max_tokens,
        "seed": seed + job.sample,
    }


@dataclass(frozen=True)
class Templates:
    system: str
    user: str
    reask: str
    few_shot: tuple[Message, ...] = ()


def templates_path(name: str = DEFAULT, layout: Layout = "letters") -> Path:
    """The templates file ``gen.prompts = name`` means: a YAML path or the layout's own."""
    return LAYOUT_TEMPLATES[layout] if name == DEFAULT else Path(name).expanduser()


def load_templates(name: str = DEFAULT, layout: Layout = "letters") -> Templates:
    """Templates from ``name`` (a YAML path) or, for ``default``, the layout's file."""
    path = templates_path(name, layout)
    if not path.is_file():
        raise SciqaError(f"gen.prompts = {name!r}: templates file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SciqaError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    missing = [key for key in REQUIRED if not isinstance(data.get(key), str)]
    if missing:
        raise SciqaError(f"{path}: missing template(s) {', '.join(missing)} (text values)")
    few_shot = data.get("few_shot") or []
    if not all(isinstance(t, dict) and {"role", "content"} <= set(t) for t in few_shot):
        raise SciqaError(f"{path}: few_shot must be a list of {{role, content}} turns")
    return Templates(
        data["system"],
        data["user"],
        data["reask"],
        tuple({"role": str(t["role"]), "content": str(t["content"])} for t in few_shot),
    )


def _fields(letters: list[str], layout: Layout, **extra: Any) -> dict[str, Any]:
    return {
        "n_options": len(letters),
        "n_wrong": len(letters) - 1,
        "letters": ", ".join(letters),
        "last_letter": letters[-1],
        "example": example_reply(letters, layout),
        **extra,
    }


def _format(template: str, fields: dict[str, Any], what: str) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise SciqaError(f"gen.prompts: template {what!r} has a bad placeholder: {exc}") from None


def render_messages(
    templates: Templates,
    title: str,
    passage: str,
    letters: list[str],
    layout: Layout = "letters",
) -> list[Message]:
    """System, few-shot turns, then the user message asking about ``passage``."""
    fields = _fields(letters, layout, title=title, passage=passage.strip())
    return [
        {"role": "system", "content": _format(templates.system, fields, "system")},
        *templates.few_shot,
        {"role": "user", "content": _format(templates.user, fields, "user")},
    ]


def reask_messages(
    templates: Templates,
    messages: list[Message],
    reply: str,
    reason: str,
    letters: list[str],
    layout: Layout = "letters",
) -> list[Message]:
    """The conversation continued after an invalid ``reply``: ask once more, saying why."""
    fields = _fields(letters, layout, reason=reason)
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": _format(templates.reask, fields, "reask")},
    ]


@dataclass(frozen=True)
class Asking:
    """What every request of one run shares: the templates, the option letters, the
    ``gen`` section and the seed; a job's messages and parameters follow from it."""

    templates: Templates
    letters: list[str]
    gen: GenConfig
    seed: int

    def messages(self, job: Job) -> list[Message]:
        return render_messages(
            self.templates, job.title, job.text, self.letters, self.gen.reply_layout
        )

    def params(self, job: Job) -> dict[str, Any]:
        return request_params(self.gen, self.seed, job)
