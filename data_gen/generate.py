"""Ask the LLM for questions about the selected passages, re-asking invalid replies.

Each job is one (passage, sample) pair; sample ``k`` of a passage differs from the others
by its ``seed`` parameter, so every job has its own cache key. A reply that fails
validation is recorded and, while the re-ask budget lasts, answered with a follow-up
message saying what was wrong. ``finish_reason == "length"`` is rejected, not re-asked:
a longer reply would not fit either.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from data_gen.client import BudgetExhausted, ChatClient, RequestFailed
from data_gen.parse import GeneratedQuestion, Rejected, ReplySpec, parse_reply
from data_gen.passages import PASSAGE_ID, TEXT, TITLE
from data_gen.prompts import Templates, reask_messages, render_messages
from sciqa.config import GenConfig


@dataclass(frozen=True)
class Job:
    passage_id: str
    title: str
    text: str
    sample: int  # which of the passage's questions_per_passage

    @property
    def question_id(self) -> str:
        return f"gen-{self.passage_id}-{self.sample}"


@dataclass
class Outcome:
    job: Job
    question: GeneratedQuestion | None = None
    rejections: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0  # replies used (cached or new)
    unanswered: str | None = None  # why no reply came: budget, request_failed


def make_jobs(passages: pd.DataFrame, per_passage: int) -> list[Job]:
    return [
        Job(str(row[PASSAGE_ID]), str(row[TITLE]), str(row[TEXT]), sample)
        for _, row in passages.iterrows()
        for sample in range(per_passage)
    ]


def request_params(config: GenConfig, seed: int, job: Job) -> dict[str, Any]:
    """Generation parameters; ``seed`` differs per sample so each has its own cache key."""
    return {
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "seed": seed + job.sample,
    }


def reply_text(response: dict[str, Any]) -> tuple[str, str | None]:
    """``(content, finish_reason)`` of a completion's first choice."""
    choices = response.get("choices") or [{}]
    message = choices[0].get("message") or {}
    return str(message.get("content") or ""), choices[0].get("finish_reason")


async def ask(
    client: ChatClient,
    job: Job,
    templates: Templates,
    letters: list[str],
    config: GenConfig,
    seed: int,
) -> Outcome:
    """One question for ``job``: the first valid reply within ``1 + reask_budget`` tries."""
    outcome = Outcome(job)
    messages = render_messages(templates, job.title, job.text, letters)
    params = request_params(config, seed, job)
    for attempt in range(1 + config.reask_budget):
        try:
            key, response = await client.complete(messages, params)
        except BudgetExhausted as exc:
            outcome.unanswered = f"budget: {exc}"
            return outcome
        except RequestFailed as exc:
            outcome.unanswered = f"request_failed: {exc}"
            outcome.rejections.append(_rejection(job, attempt, "", "request_failed", str(exc)))
            return outcome
        outcome.requests += 1
        text, finish = reply_text(response)
        if finish == "length":
            detail = f"reply cut at max_tokens={config.max_tokens} (finish_reason length)"
            outcome.rejections.append(_rejection(job, attempt, text, "finish_length", detail, key))
            return outcome
        try:
            outcome.question = parse_reply(text, letters, ReplySpec.from_config(config))
            return outcome
        except Rejected as exc:
            outcome.rejections.append(_rejection(job, attempt, text, exc.reason, exc.detail, key))
            messages = reask_messages(templates, messages, text, exc.detail, letters)
    return outcome


def _rejection(
    job: Job, attempt: int, raw: str, reason: str, detail: str, key: str | None = None
) -> dict[str, Any]:
    return {
        "stage": "reply",
        "id": job.question_id,
        "source_id": job.passage_id,
        "attempt": attempt,
        "reason": reason,
        "detail": detail,
        "raw": raw,
        "request_key": key,
    }


async def ask_all(
    client: ChatClient,
    jobs: list[Job],
    templates: Templates,
    letters: list[str],
    config: GenConfig,
    seed: int,
) -> list[Outcome]:
    """Every job concurrently (the client limits what is in flight); order kept."""
    from tqdm.auto import tqdm

    progress = tqdm(total=len(jobs), desc="gen", unit="q", disable=None)

    async def one(job: Job) -> Outcome:
        result = await ask(client, job, templates, letters, config, seed)
        progress.update()
        return result

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(job)) for job in jobs]
    except ExceptionGroup as errors:  # a fatal error (bad key, 404...) cancels the rest
        raise _first(errors) from None
    finally:
        progress.close()
    return [task.result() for task in tasks]


def _first(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def reply_counts(outcomes: list[Outcome]) -> dict[str, Any]:
    """Replies used, valid, and rejected by reason (a re-asked job counts each reply)."""
    reasons = Counter(r["reason"] for o in outcomes for r in o.rejections)
    return {
        "jobs": len(outcomes),
        "replies": sum(o.requests for o in outcomes),
        "valid": sum(o.question is not None for o in outcomes),
        "rejected_by_reason": dict(reasons.most_common()),
        "unanswered": sum(o.unanswered is not None for o in outcomes),
    }
