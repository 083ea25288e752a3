"""``sciqa gen --batch``: the OpenAI Batch API (half price, 24 h window) for big runs.

The first request of every job whose key is not cached yet goes into one JSONL file
(``custom_id`` = the cache key); it is uploaded, a batch is created and polled, and each
answered line is folded into the same reply cache. The normal online pass then finds
those replies in the cache and only re-asks (invalid replies) go online. The batch id is
kept in the cache, so a rerun after a crash polls the same batch instead of paying again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from typing import Any

from data_gen.cache import request_key
from data_gen.client import ChatClient
from data_gen.prompts import Asking, Job

ENDPOINT = "/v1/chat/completions"
DONE = {"completed", "failed", "expired", "cancelled"}
BATCH_DISCOUNT = 0.5  # Batch API price relative to online requests


def batch_requests(
    client: ChatClient, jobs: list[Job], asking: Asking
) -> dict[str, dict[str, Any]]:
    """Request bodies by cache key for every job's first request not answered yet."""
    bodies = {}
    for job in jobs:
        body = client.body(asking.messages(job), asking.params(job))
        bodies[request_key(body)] = body
    done = client.cache.has(bodies)
    pending = {key: body for key, body in bodies.items() if key not in done}
    limit = asking.gen.max_requests
    if limit is not None:
        pending = dict(list(pending.items())[:limit])
    return pending


async def run_batch(client: ChatClient, jobs: list[Job], asking: Asking) -> dict[str, Any]:
    """Submit (or resume) the batch for what is missing and fold its results into the cache."""
    pending = batch_requests(client, jobs, asking)
    if not pending:
        return {"submitted": 0}
    lines = [
        json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body})
        for key, body in pending.items()
    ]
    payload = ("\n".join(lines) + "\n").encode("utf-8")
    marker = "batch:" + hashlib.sha256(payload).hexdigest()
    api = client.api
    batch_id = client.cache.get_meta(marker)
    if batch_id is None:
        upload = await api.files.create(file=("requests.jsonl", payload), purpose="batch")
        batch = await api.batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
        )
        batch_id = batch.id
        client.cache.set_meta(marker, batch_id)  # before waiting: a crash resumes this batch
        print(f"batch {batch_id}: {len(pending)} requests submitted", file=sys.stderr)
    batch = await api.batches.retrieve(batch_id)
    while batch.status not in DONE:
        await asyncio.sleep(asking.gen.batch_poll_seconds)
        batch = await api.batches.retrieve(batch_id)
    folded = 0
    if batch.output_file_id:
        content = await api.files.content(batch.output_file_id)
        folded = _fold(client, pending, content.text)
    if batch.status != "completed":
        print(
            f"batch {batch_id} ended {batch.status}; {folded} replies kept, "
            "the rest are sent online",
            file=sys.stderr,
        )
    return {"submitted": len(pending), "folded": folded, "batch_id": batch_id}


def _fold(client: ChatClient, pending: dict[str, dict[str, Any]], text: str) -> int:
    folded = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        key, response = record.get("custom_id"), record.get("response") or {}
        if key not in pending or response.get("status_code") != 200:
            continue  # failed lines are not cached: the online pass retries them
        body = response["body"]
        client.cache.put(key, pending[key], body)
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        client.usage.answered += 1
        client.usage.batched += 1
        client.usage.prompt_tokens += prompt
        client.usage.completion_tokens += completion
        llm = client.llm
        price = prompt * llm.price_input_per_1k + completion * llm.price_output_per_1k
        client.usage.cost += BATCH_DISCOUNT * price / 1000
        folded += 1
    return folded
