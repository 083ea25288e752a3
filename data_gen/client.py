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

from data_gen.backends import backend_for, describe_format, response_format
from data_gen.cache import ReplyCache, request_key
from sciqa.config import LLMConfig
from sciqa.errors import SciqaError

FORMATS = ("json_schema", "json_object", "text")
# Parameters the SDK's create() does not name travel in extra_body.
_STANDARD = {"model", "messages", "temperature", "max_tokens", "seed", "response_format"}
_STANDARD |= {"presence_penalty", "frequency_penalty", "top_p", "n", "stop"}


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
    probes: int = 0  # one-field schema requests sent to find a field the engine refused

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
    """One endpoint + model; ``await complete(messages, params)`` gives a completion dict.

    ``llm`` gives the timeouts, retries, limits and prices; ``concurrency`` overrides
    ``llm.concurrency`` (``transformers serve`` takes one request at a time).
    """

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
        backend: str = "generic",
        params: dict[str, Any] | None = None,
        concurrency: int | None = None,
    ) -> None:
        import openai
        from aiolimiter import AsyncLimiter

        self.llm = llm
        self.base_url = base_url
        self.model = model
        self.cache = cache
        self.budget = budget
        self.format = response_format
        self.requested_format = response_format
        self.schema = schema
        self.backend = backend
        self.params = dict(params or {})  # backend-specific sampling settings
        self.usage = Usage()
        self._openai = openai
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=llm.timeout, max_retries=llm.sdk_retries
        )
        # Requests in flight: what the endpoint takes (None = llm.concurrency).
        self._slots = asyncio.Semaphore(concurrency or llm.concurrency)
        self._rpm = AsyncLimiter(llm.rpm, 60) if llm.rpm else None
        self._tpm = AsyncLimiter(llm.tpm, 60) if llm.tpm else None
        self._inflight: dict[str, asyncio.Future] = {}
        self._reached = False  # any reply from the server yet (to word connection errors)
        self._schema_ok = False  # a json_schema request succeeded: the schema compiles
        self._probe_lock = asyncio.Lock()
        self._probed = False
        self._schema_error: SciqaError | None = None

    @property
    def api(self) -> Any:
        """The underlying ``openai.AsyncOpenAI`` (the Batch API mode uses it directly)."""
        return self._client

    async def detect_backend(self) -> str:
        """``llm.backend = auto``: ask ``GET /models`` who serves them (once per base_url;
        the answer is kept in the cache so a fully cached rerun needs no server)."""
        name = f"backend:{self.base_url}"
        try:
            page = await self._client.models.list()
            owners = [str(getattr(m, "owned_by", "") or "") for m in page.data]
            self.backend = backend_for(self.base_url, owners)
            self.cache.set_meta(name, self.backend)
        except self._openai.OpenAIError:
            self.backend = self.cache.get_meta(name) or backend_for(self.base_url, [])
        return self.backend

    def structured_output(self) -> dict[str, Any]:
        """What the manifest records about the reply format."""
        return {
            "backend": self.backend,
            "requested": self.requested_format,
            "used": describe_format(self.backend, self.format),
            "downgrades": list(self.usage.format_downgrades),
            "params": dict(self.params),
        }

    def body(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """The request body for the current response format; its hash is the cache key."""
        merged = {**self.params, **params}
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        body.update({k: v for k, v in merged.items() if k in _STANDARD})
        extra = {k: v for k, v in merged.items() if k not in _STANDARD}
        if extra:
            body["extra_body"] = extra
        fmt = response_format(self.backend, self.format, self.schema)
        if fmt is not None:
            body["response_format"] = fmt
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
                await self._check_schema(body)
                self._downgrade_or_raise(body, exc)
                raise _FormatRejected() from exc
            except openai.APIStatusError as exc:
                self._reached = True
                self._check_alive()
                if isinstance(exc, transient) or exc.status_code >= 500:
                    if exc.status_code >= 500:  # vLLM answers 500 to a grammar it cannot build
                        await self._check_schema(body)
                    last = exc
                    continue
                raise SciqaError(self._describe_status(exc)) from None
            except transient as exc:
                self._check_alive()
                last = exc
                continue
            self._reached = True
            if _sent_format(body) == "json_schema":
                self._schema_ok = True
            response = raw.model_dump(mode="json", exclude_unset=True)
            self._count(response)
            return response
        if isinstance(last, openai.APIConnectionError) and not self._reached:
            raise SciqaError(
                f"cannot reach llm.base_url {self.base_url} ({type(last).__name__}: {last}); "
                "start the server or fix llm.base_url"
            )
        raise RequestFailed(f"{type(last).__name__}: {_one_line(last)}")

    def _check_alive(self) -> None:
        """An embedded server that died fails the run now, not after every retry: the
        replies so far are cached, so a rerun resumes."""
        from data_gen.engine.process import ServerError, server_died

        reason = server_died(self.base_url)
        if reason is not None:
            raise ServerError(f"{reason}; rerun to resume (replies so far are cached)")

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

    async def _check_schema(self, body: dict[str, Any]) -> None:
        """After a refused structured request: if one field of the schema alone is refused,
        stop with an error naming it (a downgrade would silently drop the constraint)."""
        if _sent_format(body) != "json_schema" or self._schema_ok or self.schema is None:
            return
        async with self._probe_lock:
            if self._probed:
                if self._schema_error is not None:  # found by another request: stop too
                    raise SciqaError(str(self._schema_error))
                return
            self._probed = True
            fields = self.schema.get("properties", {})
            refused = {}
            for name, spec in fields.items():
                reason = await self._probe(name, spec)
                if reason is not None:
                    refused[name] = reason
            # Every field refused: the server refuses the format itself (downgrade).
            if refused and len(refused) < len(fields):
                name, reason = next(iter(refused.items()))
                self._schema_error = SciqaError(
                    f"{self.base_url} cannot compile the reply schema at field {name!r} "
                    f"({json.dumps(fields[name])}): {reason}; {_field_hint(name)}"
                )
                raise SciqaError(str(self._schema_error))

    async def _probe(self, name: str, spec: dict[str, Any]) -> str | None:
        """Why the server refuses a one-field schema, or None if it takes it."""
        openai = self._openai
        schema = {
            "type": "object",
            "properties": {name: spec},
            "required": [name],
            "additionalProperties": False,
        }
        self.usage.probes += 1
        try:
            await self._client.with_options(max_retries=0).chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": "Reply in JSON."}],
                max_tokens=1,
                response_format=response_format(self.backend, "json_schema", schema),
            )
        except (openai.BadRequestError, openai.InternalServerError) as exc:
            return " ".join(str(exc).split())[:300]  # engines explain over several lines
        except openai.OpenAIError:
            return None
        return None

    def _downgrade_or_raise(self, body: dict[str, Any], exc: Exception) -> None:
        """A 400 on a structured-output request: fall back json_schema -> json_object -> text."""
        sent = _sent_format(body)
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


def _sent_format(body: dict[str, Any]) -> str:
    """The format a body asks for; llama-cpp-python's json_object + schema is json_schema."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object" and "schema" in fmt:
        return "json_schema"
    return fmt.get("type", "text")


def _field_hint(name: str) -> str:
    if name == "question":
        return "change gen.question_pattern / gen.max_question_chars"
    if name == "answer":
        return "set gen.response_format=json_object"
    return "change gen.option_pattern / gen.max_option_chars"


class _FormatRejected(Exception):
    """The server refused the response_format; the format was downgraded."""


def _one_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
