"""Which files of each ensemble member go into a bundle, and where they land.

The members are what ``sciqa infer`` would run (its own expansion: model dirs, run dirs,
globs, ``llm:`` names, in its order, each once). Each is copied under ``BUNDLE/models``
stripped to what infer loads, and gets the argument that names it inside the bundle:

- a fold of a train run -> ``models/<run>/<fold>`` plus the run's ``oof.parquet`` (small:
  ``--weights auto`` fits on it, and infer names the fold ``<run>-<fold>`` as before);
- any other model dir -> ``models/<dir>``;
- ``llm:default`` or ``llm:file.gguf`` -> the GGUF file itself, ``models/<stem>/<stem>.gguf``
  (converted on the target as on any machine: the cache goes outside the bundle);
- ``llm:folder`` or ``llm:org/name`` (from the local Hugging Face cache) -> ``models/<name>``.

A model dir keeps its top-level files except training leftovers (optimizer and scheduler
states, ``checkpoint-*`` and other subfolders, logits caches, a fold's own ``oof.parquet``)
and ``.bin`` weights that ``.safetensors`` weights already cover.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infer.errors import InferError
from infer.models import ModelSpec
from sciqa.assets.llm import LLM_PREFIX
from sciqa.runs import MODEL_INFO, OOF

MODELS = "models"
# Written by training, or weights of other frameworks: never read by infer.
LEFTOVERS = (
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "training_args.bin",
    OOF,  # a fold's validation logits; the run's oof.parquet is copied on its own
    "*.npy",
    "*.npz",
    "*.log",
    "events.out.tfevents*",
    "flax_model.msgpack",
    "tf_model.h5",
    "rust_model.ot",
    "*.onnx",
    "*.gguf",
)
# PyTorch pickles: transformers loads .safetensors instead when both are there.
BIN_WEIGHTS = ("pytorch_model*.bin", "model*.bin", "adapter_model.bin", "*.bin.index.json")


@dataclass
class Member:
    """One ensemble member: where it comes from and where it goes in the bundle."""

    spec: ModelSpec  # infer's own view of it (name, arg, run dir, meta)
    kind: str  # "model" (a model dir), "gguf" or "llm_dir" (llm: members)
    source: Path  # the model dir, or the GGUF file
    query: str = ""  # llm:NAME?query, kept as given
    dest: str = ""  # bundle-relative folder, e.g. models/run_a/fold_0
    arg: str = ""  # what predict.sh passes to sciqa infer for it
    files: list[Path] = field(default_factory=list)  # source files to copy
    skipped: list[str] = field(default_factory=list)  # file names left out
    base: Member | None = None  # an adapter fold's base model, bundled beside it


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def model_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The files of ``folder`` infer needs, and the names left out."""
    files, skipped = [], []
    has_safetensors = any(folder.glob("*.safetensors"))
    for path in sorted(folder.iterdir()):
        left_out = (
            path.name.startswith(".")
            or not path.is_file()
            or _matches(path.name, LEFTOVERS)
            or (has_safetensors and _matches(path.name, BIN_WEIGHTS))
        )
        if left_out:
            skipped.append(path.name + ("/" if path.is_dir() else ""))
        else:
            files.append(path)
    return files, skipped


def _llm_source(arg: str) -> tuple[str, Path]:
    """``llm:NAME?...`` -> ("gguf" | "llm_dir", the file or folder to copy)."""
    from sciqa.assets.registry import LLM, packaged_path
    from sciqa.errors import SciqaError

    name = arg[len(LLM_PREFIX) :].partition("?")[0] or "default"
    if name == "default":
        try:
            return "gguf", packaged_path(LLM)
        except SciqaError as exc:
            raise InferError(f"{arg}: {exc}") from None
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        return "llm_dir", path
    folder = _hub_cache_folder(name)
    if folder is None:
        raise InferError(
            f"{arg}: not a local GGUF file or folder, and {name!r} is not in the local "
            f"Hugging Face cache; download it first (`hf download {name}`) or pass its folder"
        )
    return "llm_dir", folder


def _hub_cache_folder(name: str) -> Path | None:
    """The snapshot folder of a Hub model already in the local cache, without network."""
    if name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: the caller says what to do
        return None


def _safe(name: str) -> str:
    """A folder name infer never reads as a glob and a shell never splits."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


class Layout:
    """Unique bundle folders: one per source, ``-2``, ``-3``... on a name clash."""

    def __init__(self) -> None:
        self.by_source: dict[Path, str] = {}
        self.taken: set[str] = set()
        self.gguf_names: dict[Path, str] = {}  # one file name per GGUF, however it is named

    def folder(self, source: Path, name: str, parent: str = MODELS) -> str:
        key = source.resolve()
        if key not in self.by_source:
            base, count = f"{parent}/{_safe(name)}", 1
            dest = base
            while dest in self.taken:
                count += 1
                dest = f"{base}-{count}"
            self.taken.add(dest)
            self.by_source[key] = dest
        return self.by_source[key]


def plan_members(specs: list[ModelSpec]) -> list[Member]:
    """Members for infer's expanded specs, with their bundle folders and arguments."""
    layout = Layout()
    members = []
    for spec in specs:
        if spec.arg.startswith(LLM_PREFIX):
            members.append(_llm_member(spec, layout))
        else:
            members.append(_dir_member(spec, layout))
    return members


def _llm_member(spec: ModelSpec, layout: Layout) -> Member:
    # The arg of an llm: spec is the argument itself (infer never globs llm: names).
    kind, source = _llm_source(spec.arg)
    query = spec.arg.partition("?")[2]
    suffix = f"?{query}" if query else ""
    if kind == "gguf":
        # Same stem, same member name on the target (llm-default, llm-<stem>).
        label = spec.arg[len(LLM_PREFIX) :].partition("?")[0] or "default"
        stem = "default" if label == "default" else source.name.removesuffix(".gguf")
        dest = layout.folder(source, stem)
        file = layout.gguf_names.setdefault(source.resolve(), f"{_safe(stem)}.gguf")
        member = Member(spec, kind, source, query, dest, files=[source])
        member.arg = f"{LLM_PREFIX}{dest}/{file}{suffix}"
        return member
    label = spec.arg[len(LLM_PREFIX) :].partition("?")[0]
    dest = layout.folder(source, Path(label).name)
    files, skipped = model_files(source)
    return Member(spec, kind, source, query, dest, f"{LLM_PREFIX}{dest}{suffix}", files, skipped)


def _dir_member(spec: ModelSpec, layout: Layout) -> Member:
    if spec.run_dir is not None:
        run = layout.folder(spec.run_dir, spec.run_dir.name)
        dest = layout.folder(spec.path, spec.path.name, parent=run)
    else:
        dest = layout.folder(spec.path, spec.path.name)
    files, skipped = model_files(spec.path)
    member = Member(spec, "model", spec.path, dest=dest, arg=dest, files=files, skipped=skipped)
    if spec.meta.get("adapter"):
        member.base = _adapter_base(spec, layout)
    return member


def _adapter_base(spec: ModelSpec, layout: Layout) -> Member:
    """A LoRA fold's base model (named in its sciqa_model.json), bundled as a folder."""
    base = str(spec.meta.get("base", ""))
    path = Path(base).expanduser()
    folder = path if path.is_dir() else _hub_cache_folder(base)
    if folder is None:
        raise InferError(
            f"{spec.path / MODEL_INFO}: the adapter's base {base!r} is neither a local folder "
            "nor in the local Hugging Face cache; download it first or fix 'base'"
        )
    dest = layout.folder(folder, Path(base).name or "base", parent=f"{MODELS}/bases")
    files, skipped = model_files(folder)
    return Member(spec, "base", folder, dest=dest, arg=dest, files=files, skipped=skipped)


def copy_member(member: Member, root: Path) -> list[Path]:
    """Copy ``member`` under ``root``; returns the bundle files written (each once)."""
    written: list[Path] = []
    target = root / member.dest
    if member.kind == "gguf":
        name = member.arg[len(LLM_PREFIX) :].partition("?")[0]
        written.append(_copy(member.source, root / name))
        return written
    for file in member.files:
        written.append(_copy(file, target / file.name))
    if member.spec.run_dir is not None and member.kind == "model":
        oof = member.spec.run_dir / OOF
        if oof.is_file():
            written.append(_copy(oof, target.parent / OOF))
    if member.base is not None:
        written += copy_member(member.base, root)
        _point_to_base(target / MODEL_INFO, member.base.dest)
    return written


def _copy(source: Path, target: Path) -> Path:
    if target.exists():  # shared by two members (one file, or a run's oof.parquet)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)  # follows Hub-cache symlinks; keeps the mtime
    target.chmod(0o644)  # train writes some files 0600; a bundle is read by anyone
    return target


def _point_to_base(meta_file: Path, base_dest: str) -> None:
    """The bundled adapter names its bundled base, relative to the bundle root (predict.sh
    runs infer from there)."""
    meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
    meta["base"] = base_dest
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
