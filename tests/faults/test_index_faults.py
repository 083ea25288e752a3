"""Faults around ``sciqa index`` / ``sciqa retrieve``: a failed, killed or locked-out
rebuild never costs the good index already in OUT, and every fault is one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from retrieval import dense, index_dir, lexical
from retrieval.commands import run_index, run_retrieve
from retrieval.errors import IndexDirError
from retrieval.search import Retriever
from sciqa.cli import app
from sciqa.errors import DiskFullError
from sciqa.outdir import OutLock, OutLocked, lock_path, partial_dir
from tests.builders import (
    RETRIEVAL_SMALL,
    WIKI_ARTICLES,
    WIKI_QUESTIONS,
    make_config,
    wiki_questions,
)

pytestmark = [pytest.mark.assets, pytest.mark.usefixtures("in_tmp")]
REPO = Path(__file__).resolve().parents[2]
# What a rebuild changes: a different index, so a leftover of it would show.
OTHER = "retrieval.chunk_words=25"


@pytest.fixture
def built(tmp_path: Path, corpus: Path) -> Path:
    out = tmp_path / "idx"
    run_index(corpus, out, make_config(*RETRIEVAL_SMALL))
    return out


def _results(folder: Path, *overrides: str) -> list[list[str]]:
    """Passage ids of the top 5 hits per WIKI_QUESTIONS question."""
    config = make_config(*RETRIEVAL_SMALL, *overrides)
    models = config.models
    retriever = Retriever.open(
        folder, config.retrieval, embedding=models.embedding, reranker=models.reranker
    )
    ids = retriever.passages["passage_id"].to_numpy()
    return [[ids[h.row] for h in q] for q in retriever.search(list(WIKI_QUESTIONS), top=5)]


def _contexts(folder: Path, tmp_path: Path) -> list[str]:
    """The contexts ``sciqa retrieve`` attaches from ``folder``."""
    questions = tmp_path / "q.csv"
    wiki_questions(3).to_csv(questions, index=False)
    out = tmp_path / "q_ctx.csv"
    run_retrieve(questions, folder, out, make_config(*RETRIEVAL_SMALL))
    return pd.read_csv(out)["context"].tolist()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output.strip()


def _one_line_error(code: int, output: str, *parts: str) -> None:
    """Exit 1 and one ``error:`` line, the last thing printed (after progress bars)."""
    assert code == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], output
    for part in parts:
        assert part in lines[-1], output


def _no_leftovers(out: Path) -> None:
    assert not partial_dir(out).exists()
    assert not lock_path(out).exists()


# --- a failed rebuild keeps the good index ---------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("retrieval.faiss_factory=Bogus12", "'Bogus12' is not a valid faiss factory"),
        ("models.embedding=/nonexistent", "models.embedding"),
    ],
    ids=["factory", "model"],
)
def test_failed_rebuild_leaves_the_old_index_untouched(
    built: Path, corpus: Path, tmp_path: Path, override: str, message: str
) -> None:
    before, contexts = _snapshot(built), _contexts(built, tmp_path)
    code, output = _cli("index", corpus, "--out", built, *_sets(*RETRIEVAL_SMALL, override))
    _one_line_error(code, output, message)
    assert _snapshot(built) == before
    assert _contexts(built, tmp_path) == contexts
    _no_leftovers(built)


def _sets(*overrides: str) -> list[str]:
    return [part for o in overrides for part in ("--set", o)]


def test_rebuild_crashing_midway_keeps_the_old_index_and_leaves_no_partial(
    built: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, contexts = _snapshot(built), _contexts(built, tmp_path)

    def crash(*args, **kwargs):  # after passages and dense.faiss are written
        assert (partial_dir(built) / index_dir.DENSE).is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(lexical, "build", crash)
    with pytest.raises(KeyboardInterrupt):
        run_index(corpus, built, make_config(*RETRIEVAL_SMALL, OTHER))
    assert _snapshot(built) == before
    assert _contexts(built, tmp_path) == contexts
    _no_leftovers(built)
    monkeypatch.undo()
    run_index(corpus, built, make_config(*RETRIEVAL_SMALL, OTHER))
    assert _results(built, OTHER) == _results(_fresh(corpus, tmp_path, OTHER), OTHER)
    _no_leftovers(built)


def _fresh(corpus: Path, tmp_path: Path, *overrides: str) -> Path:
    """An uninterrupted build with ``overrides``, to compare a resumed one with."""
    out = tmp_path / f"fresh{len(list(tmp_path.glob('fresh*')))}"
    run_index(corpus, out, make_config(*RETRIEVAL_SMALL, *overrides))
    return out


def test_out_holding_other_files_is_refused_not_replaced(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, output = _cli("index", corpus, "--out", out, *_sets(*RETRIEVAL_SMALL))
    _one_line_error(code, output, f"{out}: holds 'notes.txt'", "new or empty folder")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    _no_leftovers(out)


def test_rebuild_through_a_link_keeps_the_link(built: Path, corpus: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(built)
    run_index(corpus, link, make_config(*RETRIEVAL_SMALL, OTHER))
    assert link.is_symlink() and link.resolve() == built
    assert _results(link, OTHER) == _results(built, OTHER)
    _no_leftovers(built)


def test_damaged_manifest_is_rebuilt_not_reported(built: Path, corpus: Path) -> None:
    (built / "manifest.json").write_text("{not json")
    assert "up to date" not in run_index(corpus, built, make_config(*RETRIEVAL_SMALL))
    assert index_dir.check_index(built)["fingerprint"].startswith("sha256:")


# --- sharded builds ----------------------------------------------------------------------


def _sharded(corpus: Path, out: Path, *overrides: str, n: int = 3) -> None:
    config = make_config(*RETRIEVAL_SMALL, *overrides)
    for shard in range(n):
        run_index(corpus, out, config, shard=f"{shard}/{n}")
    run_index(None, out, config, merge=True)


@pytest.mark.parametrize("factory", ["Flat", "IVF2,Flat"])
def test_failed_merge_keeps_the_old_merged_index_and_can_be_rerun(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str
) -> None:
    sets = (f"retrieval.faiss_factory={factory}", "retrieval.nprobe=2")
    out = tmp_path / "idx"
    if factory != "Flat":
        run_index(corpus, out, make_config(*RETRIEVAL_SMALL, *sets), train=True)
    _sharded(corpus, out, *sets)
    before, old = _snapshot(out), _results(out, *sets)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lexical, "build", crash)  # BM25 comes after the dense merge
    with pytest.raises(KeyboardInterrupt):
        run_index(None, out, make_config(*RETRIEVAL_SMALL, *sets), merge=True)
    assert _snapshot(out) == before
    assert _results(out, *sets) == old
    _no_leftovers(out)
    monkeypatch.undo()
    assert "merged 3 shards" in run_index(
        None, out, make_config(*RETRIEVAL_SMALL, *sets), merge=True
    )
    assert _results(out, *sets) == old
    assert (out / "shards").is_dir()  # a merged OUT can be merged again
    if factory != "Flat":
        assert (out / "trained.faiss").is_file() and (out / "dense.ivfdata").is_file()


def test_killed_shard_is_not_merged_and_a_rerun_of_it_completes(
    corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    config = make_config(*RETRIEVAL_SMALL)
    for shard in (0, 2):
        run_index(corpus, out, config, shard=f"{shard}/3")
    # What a kill mid-shard leaves: the half-built folder beside it, and its lock.
    torn = partial_dir(index_dir.shard_dir(out, 1, 3))
    shutil.copytree(index_dir.shard_dir(out, 0, 3), torn)
    (torn / "manifest.json").unlink()
    lock_path(index_dir.shard_dir(out, 1, 3)).write_text("{}")
    with pytest.raises(IndexDirError, match=r"shard 1/3 is missing or unfinished.*--shard 1/3"):
        run_index(None, out, config, merge=True)
    # ... and an older sciqa's torn shard: a shard folder without its manifest.
    shutil.move(torn, index_dir.shard_dir(out, 1, 3))
    with pytest.raises(IndexDirError, match=r"shard 1/3 is missing or unfinished"):
        run_index(None, out, config, merge=True)
    run_index(corpus, out, config, shard="1/3")
    run_index(None, out, config, merge=True)
    assert _results(out) == _results(_fresh(corpus, tmp_path))
    assert not any(p.name.startswith(".") for p in (out / "shards").iterdir())


def test_shard_jobs_of_one_out_run_at_once_and_merge_refuses_while_one_is_written(
    corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    config = make_config(*RETRIEVAL_SMALL)
    with OutLock(index_dir.shard_dir(out, 0, 2), command="sciqa index --shard 0/2"):
        run_index(corpus, out, config, shard="1/2")  # another shard: not refused
        with pytest.raises(OutLocked, match=r"00000-of-00002: another sciqa run.*--shard 0/2"):
            run_index(corpus, out, config, shard="0/2")
    run_index(corpus, out, config, shard="0/2")
    shard_1 = OutLock(index_dir.shard_dir(out, 1, 2), command="sciqa index --shard 1/2")
    with shard_1, pytest.raises(OutLocked, match=r"00001-of-00002: another sciqa run"):
        run_index(None, out, config, merge=True)
    assert not (out / "manifest.json").exists()
    run_index(None, out, config, merge=True)


# --- one writer per OUT --------------------------------------------------------------


def test_second_index_into_the_same_out_is_refused_naming_the_holder(
    built: Path, corpus: Path
) -> None:
    before = _snapshot(built)
    with OutLock(built, command="sciqa index wiki.jsonl --out idx"):
        code, output = _cli("index", corpus, "--out", built, *_sets(*RETRIEVAL_SMALL, OTHER))
    _one_line_error(code, output, f"pid {os.getpid()}", "`sciqa index wiki.jsonl --out idx`")
    assert _snapshot(built) == before


def test_retrieve_locks_its_out_file(built: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.csv"
    wiki_questions(3).to_csv(questions, index=False)
    out = tmp_path / "q_ctx.csv"
    with OutLock(out, command="sciqa retrieve q.csv --out q_ctx.csv"):
        code, output = _cli("retrieve", questions, "--index", built, "--out", out)
    _one_line_error(code, output, "another sciqa run", "sciqa retrieve q.csv --out q_ctx.csv")
    assert not out.exists()


# --- one line, not a traceback -------------------------------------------------------------


def test_out_that_is_a_file_or_folder_fails_before_anything_loads(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the config before checking --out")

    monkeypatch.setattr("sciqa.config.load_config", no_loading)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code, output = _cli("index", "--out", afile)
    _one_line_error(code, output, f"{afile}: --out is an existing file")
    assert afile.read_text() == "keep me"
    code, output = _cli("retrieve", "q.csv", "--index", built, "--out", tmp_path)
    _one_line_error(code, output, f"{tmp_path}: --out is an existing folder")


def test_retrieve_checks_the_out_suffix_before_loading_the_index(tmp_path: Path) -> None:
    questions = tmp_path / "q.csv"
    wiki_questions(3).to_csv(questions, index=False)
    code, output = _cli("retrieve", questions, "--index", tmp_path / "none", "--out", "x.txt")
    _one_line_error(code, output, "x.txt: unsupported file type '.txt'")


@pytest.mark.parametrize("name", ["dense.faiss", "passages.parquet"])
def test_damaged_index_file_is_one_line_saying_rebuild(
    built: Path, tmp_path: Path, name: str
) -> None:
    questions = tmp_path / "q.csv"
    wiki_questions(3).to_csv(questions, index=False)
    path = built / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: the manifest's size catches it
    code, output = _cli("retrieve", questions, "--index", built, "--out", tmp_path / "o.csv")
    _one_line_error(code, output, f"{path}:", "rebuild it")
    path.write_bytes(b"\x00" * len(data))  # same size, garbage inside
    code, output = _cli("retrieve", questions, "--index", built, "--out", tmp_path / "o.csv")
    _one_line_error(code, output, f"{path}:", "rebuild it")


# --- a full disk ---------------------------------------------------------------------------


FAISS_ENOSPC = (
    "Error in void faiss::write_index(const Index*, IOWriter*, int) at index_write.cpp:499: "
    "Error: 'ret == (size * 4)' failed: write error in {}: 1048531 != 3072000 "
    "(No space left on device)"
)


def test_faiss_write_on_a_full_disk_is_disk_full_error(
    built: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    def full(index, path):
        raise RuntimeError(FAISS_ENOSPC.format(path))

    monkeypatch.setattr(faiss, "write_index", full)
    before = _snapshot(built)
    code, output = _cli("index", corpus, "--out", built, *_sets(*RETRIEVAL_SMALL, OTHER))
    _one_line_error(code, output, f"{partial_dir(built) / 'dense.faiss'}: no space left", "free")
    assert _snapshot(built) == before
    _no_leftovers(built)


def test_merge_refuses_to_start_without_room_for_the_merged_lists(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sets = ("retrieval.faiss_factory=IVF2,Flat", "retrieval.nprobe=2")
    out = tmp_path / "idx"
    run_index(corpus, out, make_config(*RETRIEVAL_SMALL, *sets), train=True)
    for shard in range(2):
        run_index(corpus, out, make_config(*RETRIEVAL_SMALL, *sets), shard=f"{shard}/2")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100))
    with pytest.raises(DiskFullError, match=r"dense.ivfdata: not enough space .* GB needed"):
        run_index(None, out, make_config(*RETRIEVAL_SMALL, *sets), merge=True)
    _no_leftovers(out)


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tiny filesystem at ``folder``; skips where this user cannot mount one."""
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s filesystem until about ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(free - leave, 0))


def test_faiss_write_on_a_real_full_disk(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small", "1m") as small:
        index = dense.new_index(384, "Flat")
        index.add(np.random.default_rng(0).random((2000, 384), dtype=np.float32))
        with pytest.raises(DiskFullError, match=r"dense.faiss: no space left on device \(0.00 GB"):
            dense.write(index, small / "dense.faiss")
        assert list(small.iterdir()) == []  # no torn file left


def test_rebuild_on_a_real_full_disk_keeps_the_old_index(corpus: Path, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small", "4m") as small:
        out = small / "idx"
        run_index(corpus, out, make_config(*RETRIEVAL_SMALL))
        before, contexts = _snapshot(out), _contexts(out, tmp_path)
        _fill(small, leave=3 * 4096)  # the lock and passages fit, dense.faiss does not
        code, output = _cli("index", corpus, "--out", out, *_sets(*RETRIEVAL_SMALL, OTHER))
        _one_line_error(code, output, "dense.faiss: no space left on device", f"GB free on {small}")
        assert _snapshot(out) == before
        assert _contexts(out, tmp_path) == contexts
        _no_leftovers(out)


# --- SIGKILL at chosen points (subprocesses: slow) ------------------------------------


def _big_corpus(path: Path, n: int = 60) -> Path:
    """Enough passages that embedding takes a second or two on a CPU."""
    texts = list(WIKI_ARTICLES.items())
    rows = []
    for i in range(n):
        title, text = texts[i % len(texts)]
        rows.append({"title": f"{title} {i}", "text": f"{text} Note {i}: " + text[::-1]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sciqa(*args: object, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", "from sciqa.cli import app; app()", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before the kill point: {proc.communicate()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _embedding(staging: Path) -> bool:
    """Passages are written and the vectors not yet: the build is embedding."""
    return (staging / index_dir.PASSAGES).is_file() and not any(staging.glob("*dense.faiss*"))


def _writing_dense(staging: Path) -> bool:
    return any(staging.glob("*dense.faiss*"))


@pytest.mark.slow
@pytest.mark.parametrize("point", [_embedding, _writing_dense], ids=["mid-embed", "mid-write"])
def test_sigkill_during_a_rebuild(tmp_path: Path, point: Callable[[Path], bool]) -> None:
    corpus = _big_corpus(tmp_path / "big.jsonl")
    out = tmp_path / "idx"
    run_index(corpus, out, make_config(*RETRIEVAL_SMALL))
    before, contexts = _snapshot(out), _contexts(out, tmp_path)
    proc = _sciqa("index", corpus, "--out", out, *_sets(*RETRIEVAL_SMALL, OTHER), cwd=tmp_path)
    _kill_when(proc, lambda: point(partial_dir(out)))
    assert _snapshot(out) == before
    assert _contexts(out, tmp_path) == contexts
    rerun = _sciqa("index", corpus, "--out", out, *_sets(*RETRIEVAL_SMALL, OTHER), cwd=tmp_path)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert "taking over the lock of a run that did not finish" in stderr
    fresh = tmp_path / "fresh"
    run_index(corpus, fresh, make_config(*RETRIEVAL_SMALL, OTHER))
    assert _manifest(out)["fingerprint"] == _manifest(fresh)["fingerprint"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "passages.parquet"), pd.read_parquet(fresh / "passages.parquet")
    )
    assert _results(out, OTHER) == _results(fresh, OTHER)
    _no_leftovers(out)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.slow
def test_sigkill_mid_shard_then_rerun_and_merge(tmp_path: Path) -> None:
    corpus = _big_corpus(tmp_path / "big.jsonl")
    out = tmp_path / "idx"
    config = make_config(*RETRIEVAL_SMALL)
    run_index(corpus, out, config, shard="0/2")
    shard = index_dir.shard_dir(out, 1, 2)
    proc = _sciqa(
        "index", corpus, "--out", out, "--shard", "1/2", *_sets(*RETRIEVAL_SMALL), cwd=tmp_path
    )
    _kill_when(proc, lambda: _embedding(partial_dir(shard)))
    assert not shard.exists()
    with pytest.raises(IndexDirError, match="shard 1/2 is missing"):
        run_index(None, out, config, merge=True)
    run_index(corpus, out, config, shard="1/2")
    run_index(None, out, config, merge=True)
    fresh = tmp_path / "fresh"
    run_index(corpus, fresh, config)
    assert _results(out) == _results(fresh)
    assert not partial_dir(shard).exists()


@pytest.mark.slow
def test_two_index_runs_into_one_out(tmp_path: Path) -> None:
    corpus = _big_corpus(tmp_path / "big.jsonl")
    out = tmp_path / "idx"
    first = _sciqa("index", corpus, "--out", out, *_sets(*RETRIEVAL_SMALL), cwd=tmp_path)
    lock = lock_path(out)
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    # The second run in this process: it starts at once, while the first still embeds.
    code, output = _cli("index", corpus, "--out", out, *_sets(*RETRIEVAL_SMALL))
    _one_line_error(code, output, f"pid {first.pid}", f"sciqa index {corpus} --out {out}")
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert _results(out)  # the first run's index is complete
    _no_leftovers(out)
