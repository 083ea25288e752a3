"""Whether a model folder's weight files are whole, found cheaply before anything loads them.

A copy cut short, or a save killed halfway, leaves a weights file that ``from_pretrained``
rejects deep inside safetensors or torch, in a long traceback that does not name the file.
Both formats say cheaply whether they are whole: a safetensors file starts with the length
of its JSON header, and that header gives the byte range of every tensor, so the file's
size must be exactly what the header promises; a torch zip (``pytorch_model.bin``,
``optimizer.pt``) ends with the zip's directory record, which a cut file lacks. Damage
inside the tensor data is not seen here: the loaders turn safetensors' own error into the
same message (:func:`weights_error`).

Used by train (a fold's backbone, its checkpoints) and infer (every member), so it lives in
the kernel; it imports neither torch nor safetensors.

>>> weights_error(Path("m/model.safetensors"), "0 bytes").args[0].split(";")[0]
'm/model.safetensors: truncated or corrupt weights (0 bytes)'
"""

from __future__ import annotations

import contextlib
import json
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sciqa.errors import SciqaError

SAFETENSORS_INDEX = "model.safetensors.index.json"
# What from_pretrained and peft read when a folder has no safetensors weights.
TORCH_WEIGHTS = ("pytorch_model*.bin", "model*.bin", "adapter_model.bin")
_LFS = b"version https://git-lfs"
_ZIP = b"PK\x03\x04"
_PICKLE = b"\x80"  # torch.save before torch 1.6 wrote a bare pickle: no end to check


class WeightsError(SciqaError):
    """A model folder's weights file is cut short or unreadable."""


def weights_error(file: Path, reason: str) -> WeightsError:
    return WeightsError(
        f"{file}: truncated or corrupt weights ({reason}); re-copy the model folder or re-train it"
    )


def weight_files(folder: Path) -> list[Path]:
    """The weight files ``from_pretrained`` would read in ``folder``: its safetensors
    files, or, where there are none, its torch ``.bin`` weights."""
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return safetensors
    return sorted({p for pattern in TORCH_WEIGHTS for p in folder.glob(pattern)})


def file_problem(file: Path) -> str | None:
    """Why ``file`` (safetensors or a torch zip) cannot be whole, or None."""
    try:
        if file.suffix == ".safetensors":
            return _safetensors_problem(file)
        return _torch_problem(file)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"


def _safetensors_problem(file: Path) -> str | None:
    size = file.stat().st_size
    with file.open("rb") as handle:
        start = handle.read(len(_LFS))
        if start == _LFS:
            return "a Git LFS pointer, not the weights: run `git lfs pull`"
        if len(start) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (header_size,) = struct.unpack("<Q", start[:8])
        if 8 + header_size > size:
            return f"{size} bytes, but its header alone needs {8 + header_size}"
        handle.seek(8)
        try:
            header = json.loads(handle.read(header_size))
        except ValueError:
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    try:
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
            default=0,
        )
    except (KeyError, IndexError, TypeError, ValueError):
        return "its header lists a tensor without data_offsets"
    needed = 8 + header_size + end
    if size != needed:
        return f"{size} bytes, but its header says {needed}"
    return None


def _torch_problem(file: Path) -> str | None:
    with file.open("rb") as handle:
        start = handle.read(len(_LFS))
    if not start:
        return "0 bytes"
    if start == _LFS:
        return "a Git LFS pointer, not the weights: run `git lfs pull`"
    if start.startswith(_ZIP):
        if zipfile.is_zipfile(file):
            return None
        return f"{file.stat().st_size} bytes with no zip directory at its end: cut short"
    if start.startswith(_PICKLE):
        return None
    return "neither a torch zip nor a pickle"


def folder_problem(folder: Path) -> tuple[Path, str] | None:
    """The first weight file of ``folder`` that cannot be whole and why, or None (also
    when ``folder`` holds no weights: whether it must is the caller's question)."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            return index, "not a JSON index with a weight_map"
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                return folder / shard, f"missing, but {SAFETENSORS_INDEX} lists it"
    for file in weight_files(folder):
        problem = file_problem(file)
        if problem is not None:
            return file, problem
    return None


def check_weights(folder: str | Path) -> None:
    """Raise :class:`WeightsError` naming the first weight file of a local model folder
    that cannot be whole; anything that is not a local folder (a Hub name) passes."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return
    found = folder_problem(folder)
    if found is not None:
        raise weights_error(*found)


@contextlib.contextmanager
def loading_weights(folder: str | Path) -> Iterator[None]:
    """Around a ``from_pretrained`` of ``folder``: its weights checked first
    (:func:`check_weights`), and safetensors' own complaint about a damaged file (deep in
    the tensor data, past what the check reads) turned into the same one-line error."""
    check_weights(folder)
    try:
        yield
    except Exception as exc:
        # SafetensorError cannot be imported without safetensors: recognised by name.
        if type(exc).__name__ != "SafetensorError":
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise weights_error(Path(folder), reason) from None
