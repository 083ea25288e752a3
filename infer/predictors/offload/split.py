"""A causal LM checkpoint split once into one safetensors file per layer.

``causal_lm.offload = layers`` reads a model one part at a time: the embeddings, each
decoder layer, then the final norm + head. Reading one layer out of a Hub checkpoint
means finding its tensors across shards and casting them on every pass, so the split
is done once, in the streaming dtype, into ``offload_dir/<folder>-<key>-<dtype>/``:

    embed.safetensors  layer_00000.safetensors ... layer_00079.safetensors  head.safetensors
    config.json, tokenizer files (copied)  split.json (written last)

The key hashes the checkpoint's content (config.json and, per weight file, its name,
size and 256 blocks sampled across it), not its path: a copied checkpoint reuses its
split, and a retrained one never loads a stale one. Every part is written to a hidden
temporary file and renamed, and ``split.json`` is renamed into place only after every
part: an interrupted split never loads as complete, and a rerun keeps the parts already
written. A split folder is itself a model folder (``llm:<split folder>``), so it can be
built on one machine and copied to an offline one (docs/llm.md).

Sources: safetensors (one file or sharded with ``model.safetensors.index.json``) and
``pytorch_model*.bin``; a GGUF file is first converted by ``sciqa.assets.llm``.

    python -m infer.predictors.offload.split MODEL_DIR [--dir DIR] [--dtype fp16]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from infer.errors import InferError
from infer.predictors.offload.layout import Part

FORMAT = "sciqa-layers/1"
MANIFEST = "split.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt")
SAMPLES, SAMPLE_BYTES = 256, 4096  # blocks hashed per weight file for the cache key
log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class LayerSplit:
    """A complete split on disk."""

    folder: Path
    dtype: str  # torch dtype name of the stored tensors, e.g. "float16"
    parts: tuple[Part, ...]
    sizes: tuple[int, ...]  # bytes of each part's file

    def path(self, part: Part) -> Path:
        return self.folder / part.file


def default_split_dir() -> Path:
    from sciqa.assets.llm import default_cache_dir

    return default_cache_dir().parent / "layers"


def is_split(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def checkpoint_key(folder: Path) -> str:
    """Content hash of a checkpoint folder, cheap on a 140 GB one (~1 MB read per file)."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for file in sorted(_weight_files(folder)):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            step = max(size - SAMPLE_BYTES, 0) / (SAMPLES - 1)
            for k in range(SAMPLES if size > SAMPLES * SAMPLE_BYTES else 1):
                handle.seek(int(k * step))
                digest.update(handle.read(SAMPLE_BYTES if size > SAMPLES * SAMPLE_BYTES else -1))
    return digest.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]


def read_split(folder: Path, parts: list[Part] | None = None) -> LayerSplit:
    """The split in ``folder``; ``InferError`` if it is incomplete or for another layout."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InferError(f"{folder / MANIFEST}: cannot read the layer split ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise InferError(
            f"{folder / MANIFEST}: format {manifest.get('format')!r} is not {FORMAT!r}; "
            "delete the folder to split the checkpoint again"
        )
    stored = tuple(Part(p["name"], tuple(p["tensors"])) for p in manifest["parts"])
    if parts is not None and tuple(parts) != stored:
        raise InferError(
            f"{folder}: the layer split does not hold this model's layers; "
            "delete the folder to split the checkpoint again"
        )
    sizes = tuple(int(p["bytes"]) for p in manifest["parts"])
    for part, size in zip(stored, sizes, strict=True):
        file = folder / part.file
        if not file.is_file() or file.stat().st_size != size:
            raise InferError(
                f"{file}: missing or not the size split.json records ({size} bytes); "
                "delete split.json to let the next run rewrite the broken parts"
            )
    return LayerSplit(folder, manifest["dtype"], stored, sizes)


def ensure_split(
    source: Path,
    parts: list[Part],
    dtype: str,
    root: Path | None,
    tied: dict[str, str] | None = None,
) -> LayerSplit:
    """The split of checkpoint ``source`` in ``dtype`` (fp32/bf16/fp16) under ``root``:
    found, resumed or written. A ``source`` that is itself a split is used as it is.
    ``tied``: parameter -> the one it shares weights with (stored once in checkpoints)."""
    if is_split(source):
        return read_split(source, parts)
    root = Path(root).expanduser() if root is not None else default_split_dir()
    key = checkpoint_key(source)
    # Found by key alone: a copy of the checkpoint under another folder name reuses it.
    found = sorted(root.glob(f"*-{key[:16]}-{dtype}")) if root.is_dir() else []
    fresh = found[0] if found else root / f"{source.name}-{key[:16]}-{dtype}"
    target = next((f for f in found if is_split(f)), fresh)  # complete, else resume one
    if is_split(target):
        try:
            return read_split(target, parts)
        except InferError as exc:  # a damaged cache: rewrite what is broken, keep the rest
            log.warning("%s; rewriting the split", exc)
            with contextlib.suppress(OSError):
                (target / MANIFEST).unlink()
    _check_writable(root)
    target.mkdir(parents=True, exist_ok=True)
    with _lock(target):  # another process splitting the same checkpoint: wait, then reuse
        if not is_split(target):
            _write_split(source, target, parts, dtype, tied or {})
    return read_split(target, parts)


@contextlib.contextmanager
def _lock(folder: Path) -> Any:
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent splits to guard against
        yield
        return
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InferError(
            f"causal_lm.offload_dir: {root} is not writable ({reason}); "
            "set causal_lm.offload_dir to a folder with room for a copy of the model"
        ) from None


def _write_split(
    source: Path, target: Path, parts: list[Part], dtype: str, tied: dict[str, str]
) -> None:
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    torch_dtype = getattr(torch, DTYPES[dtype])
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob(".*.tmp"):  # left by a killed run
        stale.unlink()
    todo = [p for p in parts if not _part_is_complete(target / p.file, p, torch_dtype)]
    if todo:
        done = len(parts) - len(todo)
        print(
            f"splitting {source} into {len(parts)} per-layer files (once; {done} already "
            f"there): {target}",
            file=sys.stderr,
        )
    with _Checkpoint(source, tied) as checkpoint:
        for part in tqdm(todo, desc="layer split", unit="part", leave=False):
            tensors = {n: checkpoint.tensor(n).to(torch_dtype).contiguous() for n in part.tensors}
            _atomic(target / part.file, partial(save_file, tensors, metadata={"format": "pt"}))
            del tensors
    for file in source.iterdir():  # config, tokenizer, chat template: a split is a model folder
        small = file.is_file() and file.stat().st_size < 64 << 20
        if small and file.suffix not in WEIGHT_SUFFIXES and "index" not in file.name:
            shutil.copy2(file, target / file.name)
    sizes = [(target / p.file).stat().st_size for p in parts]
    manifest = {
        "format": FORMAT,
        "source": str(source.resolve()),
        "dtype": DTYPES[dtype],
        "parts": [
            {"name": p.name, "tensors": list(p.tensors), "bytes": size}
            for p, size in zip(parts, sizes, strict=True)
        ],
    }
    text = json.dumps(manifest, indent=1)
    _atomic(target / MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _atomic(path: Path, write: Any) -> None:
    """``write(tmp)`` then rename over ``path``: readers see the whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _part_is_complete(file: Path, part: Part, dtype: Any) -> bool:
    """A part written by an earlier (interrupted) run: all its tensors, in ``dtype``."""
    if not file.is_file():
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            if set(handle.keys()) != set(part.tensors):
                return False
            return all(handle.get_slice(n).get_dtype() == _st_dtype(dtype) for n in part.tensors)
    except (SafetensorError, OSError):
        return False


def _st_dtype(dtype: Any) -> str:
    return {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[str(dtype).split(".")[-1]]


class _Checkpoint:
    """Tensors by name across a checkpoint's files (safetensors shards or torch .bin)."""

    def __init__(self, folder: Path, tied: dict[str, str]):
        self.folder, self.tied = folder, tied
        self.stack = contextlib.ExitStack()
        self.where: dict[str, Path] = {}
        self.open: dict[Path, Any] = {}

    def __enter__(self) -> _Checkpoint:
        from safetensors import safe_open

        files = sorted(self.folder.glob("*.safetensors")) or sorted(
            self.folder.glob("pytorch_model*.bin")
        )
        if not files:
            raise InferError(
                f"{self.folder}: no *.safetensors or pytorch_model*.bin weights to split"
            )
        for file in files:
            if file.suffix == ".safetensors":
                handle = self.stack.enter_context(safe_open(str(file), framework="pt"))
                keys = list(handle.keys())
            else:
                import torch

                handle = torch.load(file, mmap=True, weights_only=True, map_location="cpu")
                keys = list(handle)
            self.open[file] = handle
            self.where.update(dict.fromkeys(keys, file))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()
        self.open.clear()

    def tensor(self, name: str) -> Any:
        found = name if name in self.where else self.tied.get(name)
        if found not in self.where:
            raise InferError(
                f"{self.folder}: the checkpoint has no tensor {name!r}; it does not match "
                "its config.json (re-download it, or use causal_lm.offload=none)"
            )
        handle = self.open[self.where[found]]
        return handle.get_tensor(found) if hasattr(handle, "get_tensor") else handle[found]


def main(argv: list[str] | None = None) -> None:
    """Split a checkpoint ahead of time (say, before copying it to an offline machine)."""
    import argparse

    from sciqa.assets.llm import causal_lm_path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", help="llm:NAME, a model folder or a .gguf file")
    parser.add_argument("--dir", type=Path, default=None, help="split cache (offload_dir)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    args = parser.parse_args(argv)
    from infer.predictors.offload.layout import layout_of

    try:
        path = Path(causal_lm_path(args.model) or args.model)
        parts, tied = layout_of(path)
        split = ensure_split(path, parts, args.dtype, args.dir, tied)
    except InferError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(split.folder)


if __name__ == "__main__":
    main()
