"""``sciqa gen``: passages -> requests -> validated replies -> filtered questions -> files.

Writes OUT (sciqa schema, labelled, ``context`` = source passage), ``<OUT stem>.rejected.jsonl``
(every dropped reply or question with its reason), and ``config.yaml`` + ``manifest.json``
beside OUT. Requests are cached in ``<OUT stem>.cache.sqlite`` so a rerun resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import string
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from data_gen.cache import ReplyCache
from data_gen.generate import Outcome, ask_all, make_jobs, reply_counts
from data_gen.parse import ReplySpec, json_schema
from data_gen.passages import read_passages, select_passages
from data_gen.postprocess import postprocess
from data_gen.prompts import load_templates
from data_gen.scorers import load_encoder, make_scorer
from sciqa.config import DEFAULT, SciqaConfig
from sciqa.errors import SciqaError
from sciqa.evaluation.audit import one_line
from sciqa.io import read_questions, table_format, write_questions, write_table, write_text
from sciqa.runs import write_run_files
from sciqa.schema import ANSWER, CONTEXT, ID, PROMPT, SOURCE, SOURCE_ID

LOCAL_KEY = "sciqa-local"  # the embedded server checks no key; the SDK wants one


@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key: str
    backend: str = "auto"  # llm.backend, or what the embedded server is


def rejected_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.rejected.jsonl")


def cache_path(out: Path, config: SciqaConfig) -> Path:
    return config.gen.cache or out.with_name(f"{out.stem}.cache.sqlite")


def api_key(config: SciqaConfig) -> str:
    """The key from the environment variable named by ``llm.api_key_env``."""
    name = config.llm.api_key_env
    key = os.environ.get(name, "").strip()
    if not key:
        raise SciqaError(
            f"environment variable {name} (llm.api_key_env) is not set: export the API key "
            f"there (any non-empty value for local servers that check none)"
        )
    return key


@contextlib.contextmanager
def endpoint(config: SciqaConfig) -> Iterator[Endpoint]:
    """The configured endpoint, or the embedded server started (and stopped) here."""
    llm = config.llm
    if llm.base_url != DEFAULT:
        if llm.model == DEFAULT:
            raise SciqaError(
                f"llm.model is 'default' but llm.base_url is {llm.base_url}: set llm.model to "
                "a model that server serves (e.g. gpt-4o-mini)"
            )
        yield Endpoint(llm.base_url, llm.model, api_key(config), llm.backend)
        return
    from data_gen.server import embedded_server

    if llm.server == "transformers":
        # transformers serve (no continuous batching) generates one reply at a time: parallel
        # requests would only queue there and run into llm.timeout, so send them one by one.
        config.llm.concurrency = 1
    backend = "vllm" if llm.server == "vllm" else "generic"
    with embedded_server(config) as (base_url, served):
        model = served if llm.model == DEFAULT else llm.model
        yield Endpoint(base_url, model, LOCAL_KEY, backend)


def model_label(config: SciqaConfig, model: str) -> str:
    """``source`` of generated rows: ``gen:<model>`` with the packaged file's name."""
    if config.llm.base_url == DEFAULT and config.llm.model == DEFAULT:
        name = config.models.llm
        return "gen:" + (Path(name).stem if name != DEFAULT else "SmolLM2-135M-Instruct")
    return f"gen:{Path(model).name if os.sep in model else model}"


def questions_frame(outcomes: list[Outcome], letters: list[str], source: str) -> pd.DataFrame:
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


def _needs_encoder(config: SciqaConfig, excludes: Sequence[Path]) -> bool:
    gen = config.gen
    filters = (gen.answerability_filter or gen.too_easy_filter) and gen.scorer == "zero_shot"
    return gen.dedup or bool(excludes) or filters or gen.science_filter == "embedding"


def run_gen(
    passages: Path,
    out: Path,
    config: SciqaConfig,
    *,
    excludes: Sequence[Path] = (),
    batch: bool = False,
    encoder: Any = None,
) -> dict[str, Any]:
    """Generate, filter and write questions; returns the manifest's counts."""
    started = time.monotonic()
    gen = config.gen
    table_format(out)  # fail on a bad suffix before any request is paid for
    excluded = {str(p): read_questions(p) for p in excludes}
    if encoder is None and _needs_encoder(config, excludes):
        encoder = load_encoder(config)
    chosen, selection = select_passages(
        read_passages(passages), gen.n, gen, config.seed, source=str(passages), encoder=encoder
    )
    letters = list(string.ascii_uppercase[: gen.n_options])
    templates = load_templates(gen.prompts)
    jobs = make_jobs(chosen, gen.questions_per_passage)
    cache = ReplyCache(cache_path(out, config))
    try:
        with endpoint(config) as target:
            outcomes, usage, stopped, structured = asyncio.run(
                _generate(config, target, cache, jobs, templates, letters, batch)
            )
    finally:
        cache.close()
    generated_at = time.monotonic()

    frame = questions_frame(outcomes, letters, model_label(config, target.model))
    needs_scorer = gen.answerability_filter or gen.too_easy_filter
    scorer = make_scorer(config, encoder) if needs_scorer and len(frame) else None
    kept, drops, post = postprocess(
        frame,
        gen,
        config.seed,
        encoder=encoder if gen.dedup or excluded else None,
        scorer=scorer,
        excluded=excluded,
    )
    if kept.empty:  # the schema check refuses an empty file; write the header alone
        write_table(kept, out)
    else:
        write_questions(kept, out, require_answer=True)
    rejects = [r for o in outcomes for r in o.rejections] + drops
    write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects), rejected_path(out)
    )

    counts = {
        "selection": selection,
        "replies": reply_counts(outcomes),
        "postprocess": post,
        "audit": post.pop("audit"),
        "audit_generated": post.pop("audit_generated"),
        "usage": usage,
        "stopped": stopped,
        "endpoint": {"base_url": target.base_url, "model": target.model},
        "structured_output": structured,
        "outputs": {
            "questions": str(out),
            "rejected": str(rejected_path(out)),
            "cache": str(cache_path(out, config)),
        },
        "seconds": {
            "generate": round(generated_at - started, 2),
            "postprocess": round(time.monotonic() - generated_at, 2),
        },
    }
    write_run_files(out.parent, "gen", config, inputs=[passages, *excludes], extra=counts)
    return counts


async def _generate(
    config: SciqaConfig,
    target: Endpoint,
    cache: ReplyCache,
    jobs: list,
    templates: Any,
    letters: list[str],
    batch: bool,
) -> tuple[list[Outcome], dict[str, Any], str | None, dict[str, Any]]:
    from data_gen.backends import sampling
    from data_gen.client import Budget, ChatClient

    gen = config.gen
    budget = Budget(gen.max_requests, gen.max_cost)
    client = ChatClient(
        config.llm,
        base_url=target.base_url,
        model=target.model,
        api_key=target.api_key,
        cache=cache,
        budget=budget,
        response_format=gen.response_format,
        schema=json_schema(letters, ReplySpec.from_config(gen)),
        backend=target.backend,
    )
    try:
        if target.backend == "auto":
            await client.detect_backend()
        client.params = sampling(
            client.backend,
            presence_penalty=gen.presence_penalty,
            frequency_penalty=gen.frequency_penalty,
            repetition_penalty=gen.repetition_penalty,
        )
        if batch:
            from data_gen.batch import run_batch

            await run_batch(client, jobs, templates, letters, config)
        outcomes = await ask_all(client, jobs, templates, letters, config.gen, config.seed)
    finally:
        await client.close()
    return outcomes, client.usage.as_dict(), budget.stopped, client.structured_output()


def summary(counts: dict[str, Any]) -> str:
    """The few lines ``sciqa gen`` prints: what was asked, answered, rejected and kept."""
    sel, rep, post, use = (
        counts["selection"],
        counts["replies"],
        counts["postprocess"],
        counts["usage"],
    )
    lines = [
        f"passages: {sel['passages']} read, {sel['science']} eligible, {sel['selected']} used",
        f"requests: {use['answered']} new, {use['cache_hits']} from cache, "
        f"{use['retries']} retried; tokens {use['prompt_tokens']}+{use['completion_tokens']}, "
        f"cost ${use['cost']:.4f}",
        f"format: {_format_line(counts.get('structured_output'))}",
        f"replies: {rep['replies']} for {rep['jobs']} questions, {rep['valid']} valid; rejected "
        + (", ".join(f"{k} {v}" for k, v in rep["rejected_by_reason"].items()) or "none"),
        "dropped: "
        + (", ".join(f"{k} {v}" for k, v in post["dropped_by_reason"].items()) or "none"),
        f"kept: {post['kept']} questions -> {counts['outputs']['questions']}; answer letters "
        + " ".join(f"{k}={v}" for k, v in post["letters_after"].items()),
    ]
    for key, what in (("audit_generated", "valid replies, before filters"), ("audit", "kept")):
        audit = counts.get(key)
        if audit is not None:
            text = audit["skipped"] if "skipped" in audit else one_line(audit)
            lines.append(f"audit ({what}): {text.removeprefix('audit: ')}")
    if counts["stopped"]:
        lines.append(f"stopped early: {counts['stopped']}; rerun to continue (replies are cached)")
    if rep["unanswered"] and not counts["stopped"]:
        lines.append(f"{rep['unanswered']} questions got no reply; rerun to retry them")
    return "\n".join(lines)


def _format_line(structured: dict[str, Any] | None) -> str:
    if not structured:
        return "unknown"
    line = f"{structured['used']} ({structured['backend']})"
    if structured["downgrades"]:
        line += f", downgraded from {structured['requested']}"
    return line
