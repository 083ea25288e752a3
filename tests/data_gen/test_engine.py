"""The embedded engine (data_gen.engine): start, health, stop, one-line errors.

Fast tests use a stand-in engine: a virtual environment whose ``vllm`` package is a stub
that serves data_gen.fake_server on the port it is given, so the real start / health /
stop path of ``sciqa gen`` runs in seconds. The slow test starts the real vLLM CPU engine
from ``.venv-engine`` (``make engine``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_gen.commands import run_gen
from data_gen.engine.process import claim_port, last_log_line, run_server
from data_gen.engine.vllm_cpu import DEFAULT_ENV
from sciqa.cli import app
from sciqa.errors import SciqaError
from tests.builders import make_config

ROOT = Path(__file__).resolve().parents[2]
STUB = """
import argparse, json, os, sys, threading
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
with open(os.environ["STUB_RECORD"], "w") as record:
    json.dump({"argv": sys.argv[1:], "kv": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}, record)
if os.environ.get("STUB_FAIL"):
    print("INFO 12-02 05:05:24 [core.py:1] loading the model")
    print("(EngineCore pid=7) ERROR 12-02 05:05:25 [core.py:9] ValueError: stub cannot load")
    print("RuntimeError: Engine core initialization failed. See root cause above.")
    sys.exit(1)
from data_gen.fake_server import FakeLLM
with FakeLLM(port=args.port, owned_by="vllm"):
    threading.Event().wait()
"""


@pytest.fixture(scope="module")
def stub_engine(tmp_path_factory) -> Path:
    """A venv whose ``vllm.entrypoints.openai.api_server`` serves the fake server."""
    env = tmp_path_factory.mktemp("engine") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = next(env.glob("lib/python3*")) / "site-packages"
    (site / "sciqa_root.pth").write_text(str(ROOT) + "\n")
    server = site / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for folder in (site / "vllm", site / "vllm" / "entrypoints", server):
        (folder / "__init__.py").write_text("")
    (server / "api_server.py").write_text(STUB)
    return env


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- the embedded engine: start, health, stop, errors ---------------------------------


def test_embedded_engine_starts_answers_and_stops(
    stub_engine, model_folder, passages_file, tmp_path, monkeypatch
):
    record = tmp_path / "argv.json"
    monkeypatch.setenv("STUB_RECORD", str(record))
    monkeypatch.delenv("OPENAI_API_KEY")  # the embedded engine needs no key
    port = claim_port(0)
    config = make_config(
        f"llm.engine_env={stub_engine}",
        f"models.llm={model_folder}",
        f"llm.server_cache_dir={tmp_path / 'cache'}",
        "llm.server_startup_timeout=60",
        f"llm.server_port={port}",
        "gen.n=3",
        "gen.dedup=false",
        "gen.answerability_filter=false",
        "gen.too_easy_filter=false",
    )
    counts = run_gen(passages_file, tmp_path / "gen" / "q.csv", config)
    assert counts["replies"]["valid"] == 3
    assert counts["structured_output"]["backend"] == "vllm"
    assert counts["endpoint"]["model"] == "sciqa-llm"
    started = json.loads(record.read_text())
    argv = started["argv"]
    assert argv[argv.index("--model") + 1] == str(model_folder)
    assert json.loads(argv[argv.index("--structured-outputs-config") + 1]) == {
        "backend": "guidance",
        "disable_any_whitespace": True,
    }
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    # Whole prompts per step: a split prefill of a seeded request crashes vLLM 0.32 on CPU.
    assert "--no-enable-chunked-prefill" in argv
    assert (
        argv[argv.index("--max-num-batched-tokens") + 1] == argv[argv.index("--max-model-len") + 1]
    )
    assert started["kv"] == "2"
    assert not _listening(port)  # stopped with the run


def test_engine_that_dies_is_quoted_in_one_line(stub_engine, model_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_RECORD", str(tmp_path / "argv.json"))
    monkeypatch.setenv("STUB_FAIL", "1")
    args = ["serve-llm", "--set", f"llm.engine_env={stub_engine}"]
    args += ["--set", f"models.llm={model_folder}", "--set", f"llm.server_cache_dir={tmp_path}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert "the vLLM engine exited while starting: ValueError: stub cannot load" in lines[0]
    assert "(full log: " in lines[0]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("llm.engine_env={tmp}/none", "the embedded engine is not installed in"),
        ("models.llm={tmp}/missing", "no such file or directory"),
        ("models.llm={tmp}", "not a model folder (no config.json)"),
        ("llm.server_port={taken}", "the port is taken on 127.0.0.1"),
    ],
)
def test_bad_engine_setup_is_a_one_line_error(
    stub_engine, model_folder, tmp_path, setting, expected
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        value = setting.format(tmp=tmp_path, taken=taken.getsockname()[1])
        args = ["serve-llm", "--set", f"llm.engine_env={stub_engine}"]
        args += ["--set", f"models.llm={model_folder}", "--set", value]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    if "not installed" in expected:
        assert "make engine" in lines[0]


def test_last_log_line_prefers_the_error_over_the_generic_ending():
    log = (
        "INFO loading\n(EngineCore pid=7) ERROR 12-02 05:05:25 [core.py:9] "
        "ValueError: bad\nRuntimeError: Engine failed. See root cause above.\n"
    )
    assert last_log_line(log) == "ValueError: bad"
    assert last_log_line("just\nthe end\n") == "the end"
    assert last_log_line("") == "no output"


def test_server_group_is_stopped_with_its_children(tmp_path):
    """A server that forks a worker (as vLLM does): both are gone after the block."""
    port = claim_port(0)
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(sys.argv[2], 'w').write(str(child.pid))\n"
        "from data_gen.fake_server import FakeLLM\n"
        "with FakeLLM(port=int(sys.argv[1])): time.sleep(600)\n"
    )
    pid_file = tmp_path / "child.pid"
    command = [sys.executable, "-c", script, str(port), str(pid_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with run_server(
        command, name="stub", port=port, log=tmp_path / "log", startup_timeout=60, env=env
    ) as base_url:
        assert base_url == f"http://127.0.0.1:{port}/v1"
        child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)
    assert not _listening(port)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "gone"


@pytest.mark.assets
def test_transformers_serve_converts_the_gguf_once_and_answers():
    """The packaged SmolLM2 GGUF -> safetensors folder -> `transformers serve` -> a reply.

    Uses the shared cache dir (as `sciqa gen` does): the ~20 s conversion runs only on the
    first run on a machine, keeping the suite fast afterwards.
    """
    import openai

    from data_gen.engine.transformers_serve import serve_transformers
    from sciqa.assets.llm import prepare_model

    folder = prepare_model("default", None)
    assert (Path(folder) / "config.json").is_file()
    assert prepare_model("default", None) == folder  # cached: no second conversion
    with serve_transformers(folder, startup_timeout=300) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="local", timeout=300)
        reply = client.chat.completions.create(
            model=folder, messages=[{"role": "user", "content": "Say hi."}], max_tokens=3
        )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens <= 3


# --- the real engine ----------------------------------------------------------------


def outside_strings(raw: str) -> str:
    """The characters of ``raw`` outside JSON strings. A string the reply never closes
    (cut by the token limit) runs to the end: its spaces are inside it, not between
    tokens."""
    kept, in_string, escaped = [], False, False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        else:
            kept.append(char)
    return "".join(kept)


def test_outside_strings_reads_an_unclosed_string_as_inside_it():
    assert outside_strings(r'{"a":"x y","b":"say \"hi\" \\"} ') == "{:,:} "
    assert outside_strings('{"question":"Which gas do plants') == "{:"  # cut by max_tokens


def schema_errors(data: object, schema: dict) -> list[str]:
    """What a JSON-schema validator says of ``data`` against gen's schema (an object of
    strings with minLength, maxLength, pattern or enum; no more keys than it lists)."""
    if not isinstance(data, dict):
        return [f"a JSON {type(data).__name__}, not an object"]
    errors = [f"unexpected key {k!r}" for k in data if k not in schema["properties"]]
    for key, rule in schema["properties"].items():
        value = data.get(key)
        if not isinstance(value, str):
            errors.append(f"{key}: {value!r} is not a string")
            continue
        if not rule.get("minLength", 0) <= len(value) <= rule.get("maxLength", len(value)):
            errors.append(f"{key}: length {len(value)} outside the schema's bounds")
        if "pattern" in rule and not re.search(rule["pattern"], value):
            errors.append(f"{key}: does not match {rule['pattern']!r}")
        if "enum" in rule and value not in rule["enum"]:
            errors.append(f"{key}: {value!r} not in {rule['enum']}")
    return errors


@pytest.mark.slow
def test_real_engine_structured_output_and_named_schema_error(tmp_path):
    """vLLM CPU on the packaged SmolLM2, asserting what the engine guarantees, not what a
    135M model happens to sample: a finished reply (finish_reason stop) is compact JSON
    valid against the schema; one cut by gen.max_tokens (length) is rejected as
    finish_length; every request is seeded; the backend is detected as vllm; an
    uncompilable pattern is named by field; and no engine process is left afterwards."""
    from data_gen.commands import rejected_path
    from data_gen.engine import serve_llm
    from data_gen.parse import ReplySpec, json_schema

    if not (DEFAULT_ENV / "bin" / "python").is_file():
        pytest.skip("no .venv-engine: run `make engine` (make test does)")
    from sciqa.assets.registry import packaged_wikipedia

    wiki = packaged_wikipedia()
    wiki["passage_id"] = [f"w{i}" for i in range(len(wiki))]
    source = tmp_path / "wiki.parquet"
    wiki[["passage_id", "title", "text"]].to_parquet(source)
    # SmolLM2 (models.llm=default): the engine's guarantees hold for any model, and the
    # 135M one keeps this eager-mode test to a minute (the default writer, Qwen-1.5B, is
    # measured by benchmarks/gen.py).
    base = ["models.llm=default", "llm.engine_compile=false", "gen.max_tokens=200"]
    base += ["gen.reask_budget=0", "gen.presence_penalty=1.5", "gen.dedup=false"]
    base += ["gen.answerability_filter=false", "gen.too_easy_filter=false"]
    config = make_config(*base)
    with serve_llm(config.llm, config.models.llm) as served:
        port = int(served.base_url.rsplit(":", 1)[1].split("/")[0])
        endpoint = [f"llm.base_url={served.base_url}", f"llm.model={served.model}"]
        endpoint.append("llm.concurrency=4")
        os.environ.setdefault("OPENAI_API_KEY", "local")
        out = tmp_path / "gen" / "q.parquet"
        run_config = make_config(*base, *endpoint, "gen.n=4")
        counts = run_gen(source, out, run_config)
        bad = [*base, *endpoint, "gen.option_pattern=(?<=a)b", "gen.n=2"]
        with pytest.raises(SciqaError, match=r"field 'correct_answer'.*look-around"):
            run_gen(source, tmp_path / "bad" / "q.parquet", make_config(*bad))
    assert counts["structured_output"] == {
        "backend": "vllm",
        "requested": "json_schema",
        "used": "json_schema",
        "downgrades": [],
        "params": {"presence_penalty": 1.5},
    }
    gen = run_config.gen
    schema = json_schema(list(string.ascii_uppercase[: gen.n_options]), ReplySpec.from_config(gen))
    with sqlite3.connect(out.with_name("q.cache.sqlite")) as db:
        rows = [(k, json.loads(q), json.loads(r)) for k, q, r in db.execute(
            "SELECT key, request, response FROM replies")]  # fmt: skip
    rejected = [json.loads(line) for line in rejected_path(out).read_text().splitlines()]
    reasons = {r["request_key"]: r["reason"] for r in rejected if r.get("stage") == "reply"}
    assert len(rows) == 4
    finished = 0
    for key, request, response in rows:
        assert request["seed"] == run_config.seed  # sampled reproducibly (one per passage)
        choice = response["choices"][0]
        raw = choice["message"]["content"]
        assert not re.search(r"\s", outside_strings(raw)), raw  # compact, even when cut
        if choice["finish_reason"] == "length":
            assert reasons.get(key) == "finish_length", raw
            continue
        assert choice["finish_reason"] == "stop", choice
        assert schema_errors(json.loads(raw), schema) == [], raw  # complete and valid
        finished += 1
    assert counts["replies"]["valid"] <= finished  # gen's own checks may refuse more
    assert not _listening(port)
    assert _engine_processes() == []


def _engine_processes() -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "vllm.entrypoints.openai.api_server" in cmdline and str(DEFAULT_ENV) in cmdline:
            found.append(cmdline)
    return found


def test_a_server_that_dies_mid_run_fails_the_next_request_at_once(tmp_path):
    """Not retried against a dead port for minutes: the request that finds it gone says
    which server died, why (its log) and that a rerun resumes."""
    import asyncio
    import signal

    from data_gen.cache import ReplyCache
    from data_gen.client import Budget, ChatClient
    from data_gen.engine.process import ServerError, server_died

    port = claim_port(0)
    script = (
        "import os, sys, time\nfrom data_gen.fake_server import FakeLLM\n"
        "open(sys.argv[2], 'w').write(str(os.getpid()))\n"
        "with FakeLLM(port=int(sys.argv[1])):\n"
        "    print('serving: about to be killed', flush=True); time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pid_file = tmp_path / "pid"
    command = [sys.executable, "-c", script, str(port), str(pid_file)]
    llm = make_config("llm.backoff_retries=6", "llm.backoff_base=60", "llm.sdk_retries=0").llm
    cache = ReplyCache(tmp_path / "c.sqlite")
    with run_server(
        command, name="stub", port=port, log=tmp_path / "log", startup_timeout=60, env=env
    ) as base_url:
        client = ChatClient(
            llm,
            base_url=base_url,
            model="fake",
            api_key="k",
            cache=cache,
            budget=Budget(None, None),
            response_format="text",
        )

        async def ask_kill_ask() -> float:
            await client.complete([{"role": "user", "content": "one"}], {})  # it runs
            assert server_died(base_url) is None
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            began = time.monotonic()
            with pytest.raises(ServerError, match=r"stub died \(exit -9\): .*rerun to resume"):
                await client.complete([{"role": "user", "content": "two"}], {})
            return time.monotonic() - began

        assert asyncio.run(ask_kill_ask()) < 30  # not 6 backoffs of up to 60 s each
    assert server_died(base_url) is None  # forgotten once the block exits
    cache.close()
