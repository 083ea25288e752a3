"""A scripted OpenAI-compatible server on 127.0.0.1 for tests and ``benchmarks/gen.py``.

Real HTTP (stdlib ``http.server`` in a thread), so the openai SDK, its retries and our
limits run exactly as against a real endpoint. Each request is recognised by the
``Title: ...`` line of its last user message; ``script[title]`` lists what to do for
that title's 1st, 2nd, ... request (afterwards: ``valid``). Behaviours:

``valid``, ``fenced`` (valid JSON inside chatter and a code fence), ``malformed``,
``missing_field``, ``six_options``, ``answer_f``, ``duplicate_options``, ``length``
(finish_reason length), ``nonsense`` (schema-valid gibberish: made-up words, as a small
writer's can be; answer C), ``429`` (with ``Retry-After: 0``), ``500``, ``slow`` (sleeps
``slow_seconds`` before answering).

Unscripted titles can also misbehave at random, for soak runs (``benchmarks/faults.py``):
``rate_429`` of requests get a 429 (drawn per arrival, as a busy server's are), and
``rate_malformed`` of request bodies get a malformed reply (drawn from the body's hash, so a
resent request gets the same reply, as from a seeded LLM: killed and uninterrupted runs
can then be compared).

It also serves the Batch API subset sciqa uses: ``POST /v1/files``, ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``.

>>> with FakeLLM() as fake: fake.base_url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import contextlib
import email.parser
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_TITLE = re.compile(r"^Title: (.*)$", re.MULTILINE)


def body_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def valid_question(title: str, letters: str = "ABCDE") -> dict[str, str]:
    """A well-formed reply about ``title``; the correct answer is always A."""
    reply = {"question": f"Which statement about {title} does the passage support?"}
    for i, letter in enumerate(letters):
        reply[letter] = f"{title} fact number {i}" if i else f"The passage's claim on {title}"
    return reply | {"answer": "A"}


def nonsense_question(title: str, letters: str = "ABCDE") -> dict[str, str]:
    """A schema-valid reply no passage supports (made-up words, like the gibberish
    SmolLM2 wrote in issue 22); the answer is C."""
    reply = {"question": f"What shape is {title} erudita abundanta?"}
    for i, letter in enumerate(letters):
        reply[letter] = f"Hollyoneukia {'buildien ' * (i + 1)}{title}".strip()
    return reply | {"answer": "C"}


def write_fake_passages(path: Path, n: int) -> Path:
    """``n`` science-looking passages of 50 words (``passage_id, title, text``) as parquet."""
    import pandas as pd

    pd.DataFrame(
        {
            "passage_id": [f"p{i}" for i in range(n)],
            "title": [f"T{i}" for i in range(n)],
            "text": [
                f"Passage {i} about the energy of electrons. " + "word " * 45 for i in range(n)
            ],
        }
    ).to_parquet(path)
    return path


class FakeLLM:
    """Start with ``with FakeLLM(...) as fake:``; ``fake.base_url`` ends in ``/v1``."""

    def __init__(
        self,
        script: dict[str, list[str]] | None = None,
        *,
        latency: float = 0.0,
        slow_seconds: float = 5.0,
        reject_json_schema: bool = False,
        batch_polls: int = 1,
        owned_by: str | None = None,
        unsupported_pattern: str | None = None,
        port: int = 0,
        rate_429: float = 0.0,
        rate_malformed: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.latency = latency
        self.slow_seconds = slow_seconds
        self.reject_json_schema = reject_json_schema
        self.owned_by = owned_by  # GET /v1/models answers with it; None = 404 there
        # A json_schema whose string pattern contains this is refused (400), as an
        # engine refuses a regex feature it cannot compile (look-arounds...).
        self.unsupported_pattern = unsupported_pattern
        self.batch_polls = batch_polls  # GETs of a batch before it reports completed
        self.rate_429, self.rate_malformed, self.seed = rate_429, rate_malformed, seed
        self._random = random.Random(seed)
        self.requests: list[dict[str, Any]] = []  # every chat request body, in arrival order
        self.answered: Counter[str] = Counter()  # body key -> replies sent (200s)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._seen: defaultdict[str, int] = defaultdict(int)
        self.in_flight = 0  # chat requests being answered right now
        self.max_in_flight = 0  # the most at once: what a concurrency limit must bound
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- behaviour -------------------------------------------------------------------

    def _next(self, title: str) -> str:
        with self._lock:
            count = self._seen[title]
            self._seen[title] += 1
        steps = self.script.get(title, [])
        return steps[count] if count < len(steps) else "valid"

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        """``(status, headers, json)`` for one chat-completion request body."""
        with self._lock:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self._reply(body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reply(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        if self.latency:
            time.sleep(self.latency)
        fmt = (body.get("response_format") or {}).get("type")
        if self.reject_json_schema and fmt == "json_schema":
            return 400, {}, _error("response_format json_schema is not supported", 400)
        if fmt == "json_schema" and self.unsupported_pattern:
            schema = body["response_format"]["json_schema"]["schema"]
            patterns = [p.get("pattern", "") for p in schema.get("properties", {}).values()]
            if any(self.unsupported_pattern in pattern for pattern in patterns):
                return 400, {}, _error("Grammar error: regex parse error:\n  unsupported", 400)
        text = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
        found = _TITLE.findall(text)
        title = found[-1].strip() if found else ""
        behaviour = self._next(title) if title in self.script else self._chaos(body)
        if behaviour == "429":
            return 429, {"Retry-After": "0"}, _error("rate limited", 429)
        if behaviour == "500":
            return 500, {}, _error("internal error", 500)
        if behaviour == "slow":
            time.sleep(self.slow_seconds)
        content, finish = _content(behaviour, title)
        with self._lock:
            self.answered[body_key(body)] += 1
        return 200, {}, _completion(body, content, finish)

    def _chaos(self, body: dict[str, Any]) -> str:
        """An unscripted request's behaviour: ``valid`` unless the random rates say not."""
        with self._lock:
            busy = self._random.random() < self.rate_429
        if busy:
            return "429"
        draw = int(body_key({"seed": self.seed, "body": body})[:8], 16) / 16**8
        return "malformed" if draw < self.rate_malformed else "valid"

    # -- the Batch API -----------------------------------------------------------------

    def upload(self, filename: str, payload: bytes) -> dict[str, Any]:
        """``POST /v1/files``: keep ``payload``; the file object."""
        file_id = f"file-in-{len(self.files)}"
        self.files[file_id] = payload
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(payload),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "batch",
            "status": "processed",
        }

    def create_batch(self, input_file_id: str) -> dict[str, Any]:
        """``POST /v1/batches``: answer every line now; it reports completed after
        ``batch_polls`` GETs."""
        output_id, total = self._run_batch(input_file_id)
        batch_id = f"batch-{len(self.batches)}"
        self.batches[batch_id] = {
            "input_file_id": input_file_id,
            "output_file_id": output_id,
            "created_at": int(time.time()),
            "total": total,
            "polls": -1,  # the create response below counts as no poll
        }
        return self.batch_status(batch_id)

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        """``GET /v1/batches/{id}``: the batch object; each call counts as a poll."""
        batch = self.batches[batch_id]
        batch["polls"] += 1
        done = batch["polls"] > self.batch_polls
        return {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch["input_file_id"],
            "completion_window": "24h",
            "status": "completed" if done else "in_progress",
            "created_at": batch["created_at"],
            "output_file_id": batch["output_file_id"] if done else None,
            "error_file_id": None,
            "request_counts": {"total": batch["total"], "completed": batch["total"], "failed": 0},
        }

    def _run_batch(self, input_file_id: str) -> tuple[str, int]:
        """Answer every line of the input file now; return (output file id, line count)."""
        text = self.files[input_file_id].decode()
        lines = [json.loads(line) for line in text.splitlines() if line]
        out = []
        for line in lines:
            status, _, reply = self.chat(line["body"])
            out.append(
                {
                    "id": f"batch_req_{len(out)}",
                    "custom_id": line["custom_id"],
                    "response": {"status_code": status, "body": reply},
                    "error": None,
                }
            )
        file_id = f"file-out-{len(self.files)}"
        self.files[file_id] = "".join(json.dumps(o) + "\n" for o in out).encode()
        return file_id, len(lines)


def _content(behaviour: str, title: str) -> tuple[str, str]:
    reply = valid_question(title)
    if behaviour == "malformed":
        return '{"question": "Unfinished, "A": ', "stop"
    if behaviour == "missing_field":
        reply.pop("answer")
    elif behaviour == "six_options":
        reply = valid_question(title, "ABCDEF")
    elif behaviour == "answer_f":
        reply["answer"] = "F"
    elif behaviour == "nonsense":
        reply = nonsense_question(title)
    elif behaviour == "duplicate_options":
        reply["C"] = reply["B"]
    elif behaviour == "length":
        return json.dumps(reply)[:40], "length"
    elif behaviour == "fenced":
        return f"Sure! Here it is:\n```json\n{json.dumps(reply)}\n```\nGood luck.", "stop"
    return json.dumps(reply), "stop"


def _completion(body: dict[str, Any], content: str, finish: str) -> dict[str, Any]:
    prompt_tokens = len(json.dumps(body["messages"])) // 4
    completion_tokens = max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-{body_key(body)[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(message: str, status: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake", "code": status}}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients killed or timed out mid-request (the tests do that) are not errors."""


class _Handler(BaseHTTPRequestHandler):
    """The HTTP side of a :class:`FakeLLM`: routes each request to one of its methods."""

    protocol_version = "HTTP/1.1"
    fake: FakeLLM  # set per server by _handler_for

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        # The client may have given up (timeout): nothing to do then.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        fake, path = self.fake, self.path.split("?")[0]
        if path in ("/health", "/v1/health"):
            return self._send(200, {"status": "ok"})
        if path == "/v1/models" and fake.owned_by is not None:
            model = {"id": "fake", "object": "model", "created": 0, "owned_by": fake.owned_by}
            return self._send(200, {"object": "list", "data": [model]})
        if match := re.fullmatch(r"/v1/batches/([\w-]+)", path):
            return self._send(200, fake.batch_status(match.group(1)))
        if match := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
            return self._send(200, fake.files[match.group(1)])
        return self._send(404, _error(f"no route {path}", 404))

    def do_POST(self) -> None:
        fake, path = self.fake, self.path.split("?")[0]
        raw = self._body()
        if path == "/v1/chat/completions":
            status, headers, payload = fake.chat(json.loads(raw))
            return self._send(status, payload, headers)
        if path == "/v1/files":
            header = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
            message = email.parser.BytesParser().parsebytes(header + raw)
            part = next(p for p in message.walk() if p.get_filename())
            return self._send(200, fake.upload(part.get_filename(), part.get_payload(decode=True)))
        if path == "/v1/batches":
            return self._send(200, fake.create_batch(json.loads(raw)["input_file_id"]))
        return self._send(404, _error(f"no route {path}", 404))


def _handler_for(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"fake": fake})


def main() -> None:
    """``python -m data_gen.fake_server --latency 0.2``: serve until killed (benchmarks)."""
    import argparse

    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible test server.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per reply")
    parser.add_argument("--rate-429", type=float, default=0.0, help="share of requests 429'd")
    parser.add_argument("--rate-malformed", type=float, default=0.0, help="share malformed")
    parser.add_argument("--seed", type=int, default=0, help="seed of both draws")
    args = parser.parse_args()
    chaos = {"rate_429": args.rate_429, "rate_malformed": args.rate_malformed, "seed": args.seed}
    with FakeLLM(latency=args.latency, **chaos) as fake:
        print(fake.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
