"""sciqa.weights: a weights file cut short (or not weights at all) is named with the
reason, from its first bytes; whole files of both formats pass. Files are written here
byte by byte (the safetensors layout, a zip as torch.save writes one): no torch needed."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

from sciqa.errors import SciqaError
from sciqa.weights import check_weights, file_problem, folder_problem, loading_weights
from tests.builders import cut_in_half


def write_safetensors(path: Path, n_floats: int = 64) -> Path:
    """A whole safetensors file: 8-byte header length, JSON header, the tensor bytes."""
    header = {
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]},
    }
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(4 * n_floats))
    return path


def write_torch_zip(path: Path) -> Path:
    """What torch.save writes since torch 1.6: a zip archive (data.pkl and the storages)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 50)
        archive.writestr("archive/data/0", bytes(4000))
    return path


def test_whole_files_of_both_formats_pass(tmp_path):
    assert file_problem(write_safetensors(tmp_path / "model.safetensors")) is None
    assert file_problem(write_torch_zip(tmp_path / "pytorch_model.bin")) is None
    legacy = tmp_path / "old.bin"  # a bare pickle (torch < 1.6): nothing to check it by
    legacy.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19." + bytes(100))
    assert file_problem(legacy) is None
    assert folder_problem(tmp_path) is None
    check_weights(tmp_path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (cut_in_half, "181 bytes, but its header says 362"),
        (lambda f: f.write_bytes(f.read_bytes() + b"\0"), "363 bytes, but its header says 362"),
        (lambda f: f.write_bytes(f.read_bytes()[:40]), "40 bytes, but its header alone needs 106"),
        (lambda f: f.write_bytes(b"\x01\0"), "2 bytes, shorter than the 8-byte header length"),
        (lambda f: f.write_bytes(struct.pack("<Q", 3) + b"{x}"), "its header is not JSON"),
        (
            lambda f: f.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"),
            "a Git LFS pointer, not the weights: run `git lfs pull`",
        ),
    ],
)
def test_a_damaged_safetensors_file_is_named_with_the_reason(tmp_path, damage, reason):
    file = write_safetensors(tmp_path / "model.safetensors")
    damage(file)
    assert file_problem(file) == reason
    with pytest.raises(SciqaError) as raised:
        check_weights(tmp_path)
    assert str(raised.value) == (
        f"{file}: truncated or corrupt weights ({reason}); re-copy the model folder or re-train it"
    )


def test_a_cut_torch_zip_is_named_and_empty_or_foreign_files_too(tmp_path):
    file = cut_in_half(write_torch_zip(tmp_path / "pytorch_model.bin"))
    assert file_problem(file) == (
        f"{file.stat().st_size} bytes with no zip directory at its end: cut short"
    )
    file.write_bytes(b"")
    assert file_problem(file) == "0 bytes"
    file.write_bytes(b"<html>not found</html>")
    assert file_problem(file) == "neither a torch zip nor a pickle"


def test_safetensors_are_what_is_checked_where_both_formats_are_present(tmp_path):
    """from_pretrained reads the safetensors and ignores a .bin beside them."""
    write_safetensors(tmp_path / "model.safetensors")
    cut_in_half(write_torch_zip(tmp_path / "pytorch_model.bin"))
    assert folder_problem(tmp_path) is None


def test_a_sharded_checkpoint_names_its_missing_or_cut_shard(tmp_path):
    first = write_safetensors(tmp_path / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": first.name, "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    missing = tmp_path / "model-00002-of-00002.safetensors"
    assert folder_problem(tmp_path) == (
        missing,
        "missing, but model.safetensors.index.json lists it",
    )
    write_safetensors(missing)
    assert folder_problem(tmp_path) is None
    cut_in_half(first)
    assert folder_problem(tmp_path) == (first, "181 bytes, but its header says 362")


def test_a_hub_name_or_a_folder_without_weights_is_not_refused_here(tmp_path):
    check_weights("org/some-model")
    check_weights(tmp_path)


def test_safetensors_own_complaint_becomes_the_same_one_line_error(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    file = write_safetensors(tmp_path / "model.safetensors")
    data = bytearray(file.read_bytes())
    data[9:14] = b"{[[[["  # a header of the right length that is no longer JSON
    file.write_bytes(bytes(data))
    with pytest.raises(SciqaError, match="truncated or corrupt weights"):
        check_weights(tmp_path)  # the cheap check already sees it
    with pytest.raises(SciqaError) as raised, loading_weights("org/model"):
        safetensors.safe_open(str(file), framework="np")
    assert str(raised.value).startswith("org/model: truncated or corrupt weights (")
    with pytest.raises(KeyError), loading_weights(tmp_path / "absent"):
        raise KeyError("not a weights problem: passed through")
