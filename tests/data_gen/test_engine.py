"""The embedded engine's contract and per-backend structured output.

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
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_gen.backends import response_format, sampling
from data_gen.commands import run_gen
from data_gen.engine.process import claim_port, last_log_line, run_server
from data_gen.engine.vllm_cpu import DEFAULT_ENV, engine_python
from data_gen.fake_server import FakeLLM, write_fake_passages
from data_gen.parse import Rejected, ReplySpec, json_schema, parse_reply
from sciqa.cli import app
from sciqa.config import load_config
from sciqa.errors import SciqaError

ROOT = Path(__file__).resolve().parents[2]
LETTERS = ["A", "B", "C"]
FILTERS_OFF = [
    "gen.dedup=false",
    "gen.answerability_filter=false",
    "gen.too_easy_filter=false",
]
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


@pytest.fixture
def passages_file(tmp_path: Path) -> Path:
    return write_fake_passages(tmp_path / "passages.parquet", 3)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


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


def stub_config(stub_engine: Path, model_folder: Path, tmp_path: Path, *overrides: str):
    return load_config(
        None,
        [
            f"llm.engine_env={stub_engine}",
            f"models.llm={model_folder}",
            f"llm.server_cache_dir={tmp_path / 'cache'}",
            "llm.server_startup_timeout=60",
            *FILTERS_OFF,
            *overrides,
        ],
    )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- per-backend structured output ---------------------------------------------------


SCHEMA = json_schema(LETTERS, ReplySpec(300, 150, r"^\w.*$", r"^\w.*$"))


@pytest.mark.parametrize(
    ("backend", "kind", "lengths"),
    [
        ("vllm", "json_schema", True),
        ("llama-server", "json_schema", True),
        ("ollama", "json_schema", True),
        ("generic", "json_schema", True),
        ("openai", "json_schema", False),  # strict mode refuses minLength/maxLength
        ("llama-cpp-python", "json_object", True),
    ],
)
def test_response_format_per_backend(backend, kind, lengths):
    sent = response_format(backend, "json_schema", SCHEMA)
    assert sent["type"] == kind
    schema = sent["schema"] if kind == "json_object" else sent["json_schema"]["schema"]
    assert ("maxLength" in schema["properties"]["A"]) is lengths
    assert schema["properties"]["A"]["pattern"] == r"^\w.*$"
    assert schema["properties"]["answer"]["enum"] == LETTERS


def test_sampling_names_the_repetition_penalty_per_backend():
    kwargs = {"presence_penalty": 1.5, "frequency_penalty": 0.0, "repetition_penalty": 1.1}
    assert sampling("vllm", **kwargs) == {"presence_penalty": 1.5, "repetition_penalty": 1.1}
    assert sampling("llama-server", **kwargs)["repeat_penalty"] == 1.1
    assert sampling("openai", **kwargs) == {"presence_penalty": 1.5}
    assert sampling("openai", presence_penalty=0.0) == {}  # zero: body as before


@pytest.mark.parametrize(
    ("owned_by", "backend", "used"),
    [
        ("vllm", "vllm", "json_schema"),
        ("llamacpp", "llama-server", "json_schema"),
        ("me", "llama-cpp-python", "json_object+schema"),
        (None, "generic", "json_schema"),  # no GET /v1/models
    ],
)
def test_backend_is_detected_and_recorded(passages_file, tmp_path, owned_by, backend, used):
    out = tmp_path / "q.csv"
    with FakeLLM(owned_by=owned_by) as fake:
        config = load_config(
            None,
            [
                f"llm.base_url={fake.base_url}",
                "llm.model=fake",
                "gen.repetition_penalty=1.1",
                *FILTERS_OFF,
            ],
        )
        config.gen.n = 3
        counts = run_gen(passages_file, out, config)
    structured = json.loads((tmp_path / "manifest.json").read_text())["structured_output"]
    assert structured["backend"] == backend and structured["used"] == used
    assert counts["replies"]["valid"] == 3
    body = fake.requests[0]
    assert body["presence_penalty"] == 1.5  # the gen default
    if backend == "llama-cpp-python":
        assert body["response_format"]["type"] == "json_object"
        assert body["response_format"]["schema"]["properties"]["A"]["maxLength"] == 150
        assert body["repeat_penalty"] == 1.1
    elif backend == "vllm":
        assert body["repetition_penalty"] == 1.1
    elif backend == "llama-server":
        assert body["repeat_penalty"] == 1.1
    else:
        assert "repeat_penalty" not in body and "repetition_penalty" not in body


def test_uncompilable_field_is_named_in_a_one_line_error(passages_file, tmp_path):
    """A refused json_schema is probed field by field: the refused one is named, no
    silent downgrade to json_object (which would drop the pattern)."""
    with FakeLLM(owned_by="vllm", unsupported_pattern="(?<=") as fake:
        args = [
            "gen", str(passages_file), "--out", str(tmp_path / "q.csv"), "--n", "3",
            "--set", f"llm.base_url={fake.base_url}", "--set", "llm.model=fake",
            "--set", "gen.option_pattern=(?<=x)y", *[a for s in FILTERS_OFF for a in ("--set", s)],
        ]  # fmt: skip
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "cannot compile the reply schema at field 'A'" in lines[0]
    assert "gen.option_pattern" in lines[0] and "Grammar error" in lines[0]
    assert not (tmp_path / "q.csv").exists()


def test_whole_format_refused_still_downgrades(passages_file, tmp_path):
    with FakeLLM(reject_json_schema=True) as fake:
        config = load_config(
            None, [f"llm.base_url={fake.base_url}", "llm.model=fake", *FILTERS_OFF]
        )
        config.gen.n = 3
        counts = run_gen(passages_file, tmp_path / "q.csv", config)
    assert counts["structured_output"]["used"] == "json_object"
    assert counts["structured_output"]["downgrades"][0].startswith("json_schema->json_object")
    assert counts["usage"]["probes"] == 5 + 2  # question, 5 options, answer
    assert counts["replies"]["valid"] == 3


# --- options that differ, limits -----------------------------------------------------


def test_reask_names_the_duplicate_option(passages_file, tmp_path):
    with FakeLLM({"T0": ["duplicate_options"]}) as fake:
        config = load_config(
            None, [f"llm.base_url={fake.base_url}", "llm.model=fake", *FILTERS_OFF]
        )
        config.gen.n = 3
        counts = run_gen(passages_file, tmp_path / "q.csv", config)
    assert counts["replies"]["valid"] == 3
    reask = next(r for r in fake.requests if len(r["messages"]) > 5)["messages"][-1]["content"]
    assert 'options B and C are the same ("T0 fact number 1")' in reask
    assert "write a different option C" in reask


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"B": "x" * 21}, "too_long"), ({"C": ", and so on"}, "pattern_mismatch")],
)
def test_limits_of_the_schema_are_checked_on_every_reply(change, reason):
    reply = {"question": "Which?", "A": "Iron", "B": "Gold", "C": "Lead", "answer": "A"}
    spec = ReplySpec(100, 20, None, r"^\w.*$")
    with pytest.raises(Rejected) as caught:
        parse_reply(json.dumps(reply | change), LETTERS, spec)
    assert caught.value.reason == reason


# --- the embedded engine: start, health, stop, errors ---------------------------------


def test_embedded_engine_starts_answers_and_stops(
    stub_engine, model_folder, passages_file, tmp_path, monkeypatch
):
    record = tmp_path / "argv.json"
    monkeypatch.setenv("STUB_RECORD", str(record))
    monkeypatch.delenv("OPENAI_API_KEY")  # the embedded engine needs no key
    port = claim_port(0)
    config = stub_config(stub_engine, model_folder, tmp_path, f"llm.server_port={port}")
    config.gen.n = 3
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


# --- the real engine ----------------------------------------------------------------


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@pytest.mark.slow
def test_real_engine_structured_output_and_named_schema_error(tmp_path):
    """vLLM CPU on the packaged SmolLM2: schema-valid compact JSON, detected as vllm,
    an uncompilable pattern named by field, and no engine process left afterwards."""
    from data_gen.engine import serve_llm

    if not (DEFAULT_ENV / "bin" / "python").is_file():
        pytest.skip("no .venv-engine: run `make engine` (make test does)")
    from sciqa.assets.registry import packaged_wikipedia

    wiki = packaged_wikipedia()
    wiki["passage_id"] = [f"w{i}" for i in range(len(wiki))]
    source = tmp_path / "wiki.parquet"
    wiki[["passage_id", "title", "text"]].to_parquet(source)
    base = ["llm.engine_compile=false", "gen.max_tokens=200", "gen.reask_budget=0"]
    base += ["gen.dedup=false", "gen.answerability_filter=false", "gen.too_easy_filter=false"]
    config = load_config(None, base)
    engine_python(config.llm)
    with serve_llm(config.llm, config.models.llm) as served:
        port = int(served.base_url.rsplit(":", 1)[1].split("/")[0])
        endpoint = [f"llm.base_url={served.base_url}", f"llm.model={served.model}"]
        endpoint.append("llm.concurrency=4")
        os.environ.setdefault("OPENAI_API_KEY", "local")
        out = tmp_path / "gen" / "q.parquet"
        counts = run_gen(source, out, load_config(None, [*base, *endpoint, "gen.n=4"]))
        bad = [*base, *endpoint, "gen.option_pattern=(?<=a)b"]
        with pytest.raises(SciqaError, match=r"field 'A'.*look-around"):
            run_gen(source, tmp_path / "bad" / "q.parquet", load_config(None, bad), n=2)
    assert counts["structured_output"] == {
        "backend": "vllm",
        "requested": "json_schema",
        "used": "json_schema",
        "downgrades": [],
        "params": {"presence_penalty": 1.5},
    }
    assert counts["replies"]["valid"] >= 2  # of 4; the benchmark counts 50 passages
    with sqlite3.connect(out.with_name("q.cache.sqlite")) as db:
        replies = [json.loads(r) for (r,) in db.execute("SELECT response FROM replies")]
    raws = [r["choices"][0]["message"]["content"] for r in replies]
    assert len(raws) == 4
    for raw in raws:
        assert not re.search(r"\s", _STRING.sub("", raw)), raw  # compact: no whitespace
        json.loads(raw)  # and complete JSON (the grammar ends it)
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
