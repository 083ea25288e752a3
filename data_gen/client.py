"""Send chat-completion requests through ``openai.AsyncOpenAI``, politely and resumably.

Limits: a semaphore caps requests in flight (``llm.concurrency``); ``aiolimiter``
caps requests/min and estimated tokens/min. Retries: the SDK retries first (it honours
``Retry-After``), then our own exponential backoff with full jitter for 429/5xx/timeouts/
connection errors. Every reply is written to the :class:`ReplyCache` before it is used,
so a killed run loses nothing it paid for. ``--max-requests``/``--max-cost`` stop new
requests; those in flight still land in the cache.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

from data_gen.cache import ReplyCache, request_key
from sciqa.config import LLMConfig
from sciqa.errors import SciqaError

FORMATS = ("json_schema", "json_object", "text")


class BudgetExhausted(Exception):
    """No new request may be sent: --max-requests or --max-cost was reached."""


class RequestFailed(Exception):
    """A request failed after every retry; it is not cached, so a rerun tries again."""


@dataclass
class Usage:
    """What this run sent and paid for (cache hits are free and counted apart)."""

    sent: int = 0  # requests sent over the network (each try that reached the budget)
    answered: int = 0  # new replies stored in the cache
    cache_hits: int = 0
    batched: int = 0  # replies folded in from the Batch API (also in answered)
    retries: int = 0  # our backoff retries (the SDK's own are not visible)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    format_downgrades: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Budget:
    """``--max-requests`` / ``--max-cost``; a request is reserved before it is sent."""

    def __init__(self, max_requests: int | None, max_cost: float | None) -> None:
        self.max_requests = max_requests
        self.max_cost = max_cost
        self.stopped: str | None = None

    def reserve(self, usage: Usage) -> None:
        if self.max_requests is not None and usage.sent >= self.max_requests:
            self.stopped = f"max_requests={self.max_requests} reached"
        elif self.max_cost is not None and usage.cost >= self.max_cost:
            self.stopped = f"max_cost={self.max_cost} reached (spent {usage.cost:.4f})"
        if self.stopped:
            raise BudgetExhausted(self.stopped)
        usage.sent += 1


class ChatClient:
    """One endpoint + model; ``await complete(messages, params)`` gives a completion dict."""

    def __init__(
        self,
        llm: LLMConfig,
        *,
        base_url: str,
        model: str,
        api_key: str,
        cache: ReplyCache,
        budget: Budget,
        response_format: str = "json_schema",
        schema: dict[str, Any] | None = None,
    ) -> None:
        import openai
        from aiolimiter import AsyncLimiter

        self.llm = llm
        self.base_url = base_url
        self.model = model
        self.cache = cache
        self.budget = budget
        self.format = response_format
        self.schema = schema
        self.usage = Usage()
        self._openai = openai
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=llm.timeout, max_retries=llm.sdk_retries
        )
        self._slots = asyncio.Semaphore(llm.concurrency)
        self._rpm = AsyncLimiter(llm.rpm, 60) if llm.rpm else None
        self._tpm = AsyncLimiter(llm.tpm, 60) if llm.tpm else None
        self._inflight: dict[str, asyncio.Future] = {}
        self._reached = False  # any reply from the server yet (to word connection errors)

    @property
    def api(self) -> Any:
        """The underlying ``openai.AsyncOpenAI`` (the Batch API mode uses it directly)."""
        return self._client

    def body(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """The request body for the current response format; its hash is the cache key."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, **params}
        if self.format == "json_schema" and self.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "mcq", "strict": True, "schema": self.schema},
            }
        elif self.format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """``(key, completion)`` from the cache, or sent now and cached on arrival."""
        while True:
            body = self.body(messages, params)
            key = request_key(body)
            cached = self.cache.get(key)
            if cached is not None:
                self.usage.cache_hits += 1
                return key, cached
            if key in self._inflight:  # the same request is already on its way
                try:
                    return key, await asyncio.shield(self._inflight[key])
                except _FormatRejected:
                    continue
            future = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            try:
                response = await self._send(body)
            except _FormatRejected as exc:
                future.set_exception(exc)
                future.exception()  # mark retrieved: waiters handle it themselves
                continue  # retry with the downgraded format (a new key)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except BaseException as exc:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # mark retrieved: waiters re-raise it themselves
                raise
            finally:
                self._inflight.pop(key, None)
            self.cache.put(key, body, response)
            future.set_result(response)
            return key, response

    async def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        openai = self._openai
        transient = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        last: Exception | None = None
        for attempt in range(self.llm.backoff_retries + 1):
            if attempt:
                self.usage.retries += 1
                await asyncio.sleep(self._backoff(attempt))
            try:
                async with self._slots:
                    # Reserved once a slot is free, so the cost of replies that arrived
                    # while this request waited counts against --max-cost.
                    self.budget.reserve(self.usage)
                    await self._limit(body)
                    raw = await self._client.chat.completions.create(**body)
            except openai.BadRequestError as exc:
                self._reached = True
                self._downgrade_or_raise(body, exc)
                raise _FormatRejected() from exc
            except openai.APIStatusError as exc:
                self._reached = True
                if isinstance(exc, transient) or exc.status_code >= 500:
                    last = exc
                    continue
                raise SciqaError(self._describe_status(exc)) from None
            except transient as exc:
                last = exc
                continue
            self._reached = True
            response = raw.model_dump(mode="json", exclude_unset=True)
            self._count(response)
            return response
        if isinstance(last, openai.APIConnectionError) and not self._reached:
            raise SciqaError(
                f"cannot reach llm.base_url {self.base_url} ({type(last).__name__}: {last}); "
                "start the server or fix llm.base_url"
            )
        raise RequestFailed(f"{type(last).__name__}: {_one_line(last)}")

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempt-1))]."""
        ceiling = min(self.llm.backoff_max, self.llm.backoff_base * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    async def _limit(self, body: dict[str, Any]) -> None:
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None:
            # ~4 characters per token for the prompt, plus the reply's worst case.
            estimate = len(json.dumps(body["messages"])) // 4 + int(body.get("max_tokens", 0))
            await self._tpm.acquire(min(estimate, self._tpm.max_rate))

    def _count(self, response: dict[str, Any]) -> None:
        usage = response.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        self.usage.answered += 1
        self.usage.prompt_tokens += prompt
        self.usage.completion_tokens += completion
        self.usage.cost += (
            prompt * self.llm.price_input_per_1k + completion * self.llm.price_output_per_1k
        ) / 1000

    def _downgrade_or_raise(self, body: dict[str, Any], exc: Exception) -> None:
        """A 400 on a structured-output request: fall back json_schema -> json_object -> text."""
        sent = body.get("response_format", {}).get("type", "text")
        if sent == "text":
            raise SciqaError(self._describe_status(exc)) from None
        if self.format == sent:  # another task may have downgraded already
            self.format = FORMATS[FORMATS.index(sent) + 1]
            self.usage.format_downgrades.append(f"{sent}->{self.format}: {_one_line(exc)}")

    def _describe_status(self, exc: Any) -> str:
        status = getattr(exc, "status_code", "?")
        hint = {
            401: f"the key in ${self.llm.api_key_env} was refused; check llm.api_key_env",
            403: "the key may not use this model or endpoint",
            404: f"check llm.model ({self.model!r}) and llm.base_url",
        }.get(status, "see the message above")
        return f"{self.base_url} answered HTTP {status}: {_one_line(exc)}; {hint}"

    async def close(self) -> None:
        await self._client.close()


class _FormatRejected(Exception):
    """The server refused the response_format; the format was downgraded."""


def _one_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
