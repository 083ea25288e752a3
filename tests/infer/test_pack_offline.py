"""sciqa pack, done when: a bundle of a tiny run installs into a fresh virtualenv from its
own wheels with the network off and the bundle read-only, and predict.sh writes the same
submission.csv, byte for byte, as ``sciqa infer`` on the original run dirs.

The heavy dependencies (torch, transformers, numpy...) play "what the Kaggle image already
has": they are left out of the bundle (pack's default exclusions) and shown to the fresh
venv through a folder of links to this environment's packages, without sciqa's own
editable install, so sciqa really comes from the bundle's wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow
pytest.importorskip("torch")
pytest.importorskip("transformers")

from sciqa.cli import app  # noqa: E402
from sciqa.io import write_questions  # noqa: E402
from tests.builders import (  # noqa: E402
    WORDS,
    build_tiny_llama,
    make_questions,
    make_run,
)

HIDDEN = ("sciqa", "__editable__", "_distutils_hack", "pip-", "__pycache__")
BLOCK_SOCKETS = """import socket

def _refuse(self, *args, **kwargs):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError("network blocked by the sciqa pack test")
    return _connect(self, *args, **kwargs)

_connect = socket.socket.connect
socket.socket.connect = _refuse
"""


def _fresh_venv(root: Path) -> Path:
    """A new venv whose site-packages links to this one's packages, minus sciqa and pip."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    deps = root / "kaggle_image_packages"
    deps.mkdir()
    for source in (Path(p) for p in site.getsitepackages()):
        for entry in source.iterdir():
            if entry.name.endswith(".pth") or entry.name.startswith(HIDDEN) or entry.name == "pip":
                continue
            if not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    (Path(purelib) / "kaggle_image.pth").write_text(f"{deps}\n")
    return python


def _offline(bundle: Path, python: Path, command: list[str]) -> list[str]:
    """``command`` with no network and ``bundle`` mounted read-only, in a private network
    and mount namespace; where namespaces are not permitted, Python's sockets are blocked
    in the venv instead (the unchanged-bundle check below still holds)."""
    probe = subprocess.run(["unshare", "-n", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        purelib = next((python.parent.parent / "lib").glob("python3*/site-packages"))
        (purelib / "sitecustomize.py").write_text(BLOCK_SOCKETS)
        return command
    script = (
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && '
        'if touch "$0/.w" 2>/dev/null; then echo "bundle is writable" >&2; exit 3; fi && '
        'if "$PYTHON" -c "import socket; socket.create_connection((\'pypi.org\', 443), 5)" '
        '2>/dev/null; then echo "network is on" >&2; exit 3; fi && exec "$@"'
    )
    return ["unshare", "-n", "-m", "bash", "-c", script, str(bundle), *command]


def test_bundle_installs_offline_and_predicts_the_same(tmp_path):
    run = make_run(tmp_path / "runs" / "run_a", 1)
    (run / "fold_0" / "optimizer.pt").write_bytes(b"0" * 64)
    llm = build_tiny_llama(tmp_path / "runs" / "tiny", [" ".join(WORDS)] * 3)
    members = [str(run), f"llm:{llm}?normalise=chars"]
    questions = write_questions(make_questions(), tmp_path / "questions.csv")
    config = tmp_path / "infer.yaml"
    config.write_text("infer:\n  batch_size: 3\n  tta: 2\ncausal_lm:\n  batch_size: 3\n")

    runner = CliRunner()
    ref = tmp_path / "ref"
    done = runner.invoke(
        app, ["infer", str(questions), *members, "--out", str(ref), "-c", str(config)]
    )
    assert done.exit_code == 0, done.output
    bundle = tmp_path / "bundle"
    done = runner.invoke(app, ["pack", *members, "--out", str(bundle), "-c", str(config)])
    assert done.exit_code == 0, done.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["wheels"]["files"] == ["sciqa-0.1.0-py3-none-any.whl"]  # built here
    before = {p: p.stat().st_size for p in bundle.rglob("*")}

    python = _fresh_venv(tmp_path)
    check = [str(python), "-c", "import torch, transformers; import sciqa"]
    imported = subprocess.run(check, capture_output=True, cwd=tmp_path, check=False)
    assert imported.returncode != 0  # torch is there, sciqa is not yet

    # PYTHON relative to the caller's directory, as a user may give it (predict.sh cds).
    env = {**os.environ, "PYTHON": "venv/bin/python", "HOME": str(tmp_path / "home")}
    env.pop("XDG_CACHE_HOME", None)
    out = tmp_path / "kaggle_working"
    command = ["bash", str(bundle / "predict.sh"), str(questions), str(out)]
    done = subprocess.run(
        _offline(bundle, python, command),
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "installing from" in done.stderr  # sciqa was not importable, so it came from wheels/
    assert (out / "submission.csv").read_bytes() == (ref / "submission.csv").read_bytes()

    where = subprocess.run(
        [str(python), "-c", "import sciqa; print(sciqa.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(tmp_path / "venv")), where
    assert {p: p.stat().st_size for p in bundle.rglob("*")} == before  # nothing written inside
    shutil.rmtree(tmp_path / "venv")
