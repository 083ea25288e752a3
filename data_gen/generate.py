"""The ask step: every job asked at the endpoint, each reply parsed, invalid ones re-asked.

:func:`ask_questions` opens a :class:`~data_gen.client.ChatClient` on the endpoint (the
backend detected, its sampling settings; the Batch API first with ``--batch``) and asks
every job concurrently. A reply that fails validation is recorded and, while the re-ask
budget lasts, answered with a follow-up message saying what was wrong.
``finish_reason == "length"`` is rejected, not re-asked: a longer reply would not fit
either. :func:`questions_frame` turns the valid replies into questions.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from data_gen.backends import sampling
from data_gen.batch import run_batch
from data_gen.cache import ReplyCache
from data_gen.client import Budget, BudgetExhausted, ChatClient, RequestFailed
from data_gen.engine import Endpoint
from data_gen.parse import GeneratedQuestion, Rejected, ReplySpec, json_schema, parse_reply
from data_gen.prompts import Asking, Job, reask_messages
from sciqa.config import LLMConfig
from sciqa.schema import ANSWER, CONTEXT, ID, PROMPT, SOURCE, SOURCE_ID


@dataclass
class Outcome:
    job: Job
    question: GeneratedQuestion | None = None
    rejections: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0  # replies used (cached or new)
    unanswered: str | None = None  # why no reply came: budget, request_failed


@dataclass
class Asked:
    """What the ask step gives: an outcome per job, and what the manifest says of asking."""

    outcomes: list[Outcome]
    usage: dict[str, Any]
    stopped: str | None  # why new requests stopped (--max-requests, --max-cost), or None
    structured_output: dict[str, Any]

    def rejections(self) -> list[dict[str, Any]]:
        return [r for o in self.outcomes for r in o.rejections]


async def ask_questions(
    endpoint: Endpoint,
    llm: LLMConfig,
    cache: ReplyCache,
    jobs: list[Job],
    asking: Asking,
    *,
    batch: bool = False,
) -> Asked:
    """Ask ``endpoint`` for every job through ``cache`` (``batch``: the Batch API first)."""
    gen = asking.gen
    schema = json_schema(asking.letters, ReplySpec.from_config(gen))
    budget = Budget(gen.max_requests, gen.max_cost)
    client = ChatClient(
        llm,
        base_url=endpoint.base_url,
        model=endpoint.model,
        api_key=endpoint.api_key,
        cache=cache,
        budget=budget,
        response_format=gen.response_format,
        schema=schema,
        backend=endpoint.backend,
        concurrency=endpoint.concurrency,
    )
    try:
        if endpoint.backend == "auto":
            await client.detect_backend()
        client.params = sampling(
            client.backend,
            presence_penalty=gen.presence_penalty,
            frequency_penalty=gen.frequency_penalty,
            repetition_penalty=gen.repetition_penalty,
        )
        if batch:
            await run_batch(client, jobs, asking)
        outcomes = await ask_all(client, jobs, asking)
    finally:
        await client.close()
    return Asked(outcomes, client.usage.as_dict(), budget.stopped, client.structured_output())


def reply_text(response: dict[str, Any]) -> tuple[str, str | None]:
    """``(content, finish_reason)`` of a completion's first choice."""
    choices = response.get("choices") or [{}]
    message = choices[0].get("message") or {}
    return str(message.get("content") or ""), choices[0].get("finish_reason")


async def ask(client: ChatClient, job: Job, asking: Asking) -> Outcome:
    """One question for ``job``: the first valid reply within ``1 + reask_budget`` tries."""
    outcome = Outcome(job)
    gen, letters = asking.gen, asking.letters
    messages, params = asking.messages(job), asking.params(job)
    for attempt in range(1 + gen.reask_budget):
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
            detail = f"reply cut at max_tokens={gen.max_tokens} (finish_reason length)"
            outcome.rejections.append(_rejection(job, attempt, text, "finish_length", detail, key))
            return outcome
        try:
            outcome.question = parse_reply(text, letters, ReplySpec.from_config(gen))
            return outcome
        except Rejected as exc:
            outcome.rejections.append(_rejection(job, attempt, text, exc.reason, exc.detail, key))
            messages = reask_messages(
                asking.templates, messages, text, exc.detail, letters, gen.reply_layout
            )
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


async def ask_all(client: ChatClient, jobs: list[Job], asking: Asking) -> list[Outcome]:
    """Every job concurrently (the client limits what is in flight); order kept."""
    from sciqa.progress import progress as progress_bar

    progress = progress_bar(len(jobs), "gen")

    async def one(job: Job) -> Outcome:
        result = await ask(client, job, asking)
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


def questions_frame(outcomes: list[Outcome], letters: list[str], source: str) -> pd.DataFrame:
    """The valid replies as questions in the sciqa schema (``context`` = the passage)."""
    rows = []
    for outcome in outcomes:
        question = outcome.question
        if question is None:
            continue
        rows.append(
            {
                ID: outcome.job.question_id,
                PROMPT: question.question,
                **dict(zip(letters, question.options, strict=True)),
                ANSWER: question.answer,
                CONTEXT: outcome.job.text,
                SOURCE: source,
                SOURCE_ID: outcome.job.passage_id,
            }
        )
    return pd.DataFrame(rows, columns=[ID, PROMPT, *letters, ANSWER, CONTEXT, SOURCE, SOURCE_ID])
