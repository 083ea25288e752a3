"""Question tables and corpora through Hugging Face ``datasets``, the two inputs that are
not a file:

* ``hf:OWNER/NAME[:CONFIG][@SPLIT]``: the Hub, through ``datasets.load_dataset``. It
  honours ``HF_HUB_OFFLINE`` and reads the datasets cache, so an offline machine with a
  warm cache works (docs/inputs.md says how to warm it).
* ``FOLDER`` or ``FOLDER@SPLIT``: what ``Dataset.save_to_disk`` (or
  ``DatasetDict.save_to_disk``) wrote, through ``datasets.load_from_disk``.

``@SPLIT`` may be left out when there is one split. A Hub corpus is streamed instead
(:func:`stream_split`): a Wikipedia dump need not fit on disk or in memory. ``datasets``
is imported inside the functions, so ``sciqa --help`` and file inputs never import it.

>>> HubSpec.parse("hf:allenai/ai2_arc:ARC-Challenge@test")
HubSpec(name='allenai/ai2_arc', config='ARC-Challenge', split='test')
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sciqa.errors import SciqaError

HF = "hf:"
_SPEC = re.compile(r"hf:(?P<name>[\w.-]+(?:/[\w.-]+)?)(?::(?P<config>[^@:]+))?(?:@(?P<split>.+))?")
SAVED = ("state.json", "dataset_dict.json")  # what save_to_disk writes: a split, or several
DOCS = "docs/inputs.md"


@dataclass(frozen=True)
class HubSpec:
    name: str  # OWNER/NAME, as load_dataset takes it
    config: str | None
    split: str | None

    @classmethod
    def parse(cls, source: str) -> HubSpec:
        match = _SPEC.fullmatch(source)
        if match is None:
            raise SciqaError(
                f"{source}: not a Hub dataset; write hf:OWNER/NAME[:CONFIG][@SPLIT], "
                "e.g. hf:allenai/ai2_arc:ARC-Challenge@test"
            )
        return cls(match["name"], match["config"], match["split"])

    def load_call(self) -> str:
        """The Python that fills the datasets cache with this dataset."""
        config = f", {self.config!r}" if self.config else ""
        return f"import datasets; datasets.load_dataset({self.name!r}{config})"


def is_dataset_source(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is read through ``datasets``: an ``hf:`` name or a save_to_disk
    folder (with or without ``@SPLIT``)."""
    text = str(source)
    return text.startswith(HF) or _saved_folder(text) is not None


def is_saved_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in SAVED)


def _saved_folder(text: str) -> tuple[Path, str | None] | None:
    if is_saved_folder(Path(text)):
        return Path(text), None
    folder, at, split = text.rpartition("@")
    if at and folder and split and is_saved_folder(Path(folder)):
        return Path(folder), split
    return None


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise SciqaError(
            "reading hf: names and save_to_disk folders needs the datasets package: "
            "pip install 'sciqa[ml]'"
        ) from None
    return datasets


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_split(source: str) -> Any:
    """The ``datasets.Dataset`` of the one split ``source`` names."""
    if source.startswith(HF):
        return _hub_split(source, HubSpec.parse(source))
    where = _saved_folder(source)
    if where is None:
        raise SciqaError(f"{source}: not a datasets save_to_disk folder (no {' or '.join(SAVED)})")
    folder, split = where
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as exc:
        raise SciqaError(
            f"{folder}: cannot be read as a datasets save_to_disk folder: {_reason(exc)}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        return loaded[_split_named(list(loaded), split, source, str(folder))]
    if split is not None:
        raise SciqaError(
            f"{source}: {folder} holds one split, not a split {split!r}; drop @{split}"
        )
    return loaded


def _split_named(names: list[str], split: str | None, source: str, base: str) -> str:
    """The split asked for, or the only one; else a line listing the splits."""
    listed = ", ".join(names)
    if split is None:
        if len(names) == 1:
            return names[0]
        raise SciqaError(f"{source}: has the splits {listed}; name one, e.g. {base}@{names[0]}")
    if split not in names:
        raise SciqaError(f"{source}: no split {split!r}; its splits are {listed}")
    return split


def _hub_split(source: str, spec: HubSpec) -> Any:
    datasets = _datasets()
    with _hub_errors(source, spec, datasets):
        split = spec.split
        if split is None:
            names = datasets.get_dataset_split_names(spec.name, spec.config)
            split = _split_named(names, None, source, source.partition("@")[0])
        return datasets.load_dataset(spec.name, spec.config, split=split)


@contextlib.contextmanager
def _hub_errors(source: str, spec: HubSpec, datasets: Any) -> Iterator[None]:
    """What ``datasets`` raises for a Hub name, as one line saying what to do."""
    base = source.partition("@")[0]
    try:
        yield
    except ConnectionError:
        # datasets raises this offline (HF_HUB_OFFLINE=1) and when the Hub is unreachable,
        # once its cache has no copy either.
        raise SciqaError(
            f"{source}: not in the datasets cache ({datasets.config.HF_DATASETS_CACHE}) and "
            "the Hub cannot be reached (HF_HUB_OFFLINE=1 or no network); on a machine with "
            f'network run `python -c "{spec.load_call()}"` and copy its HF_HOME '
            f"(~/.cache/huggingface) here, or save_to_disk it and pass the folder ({DOCS})"
        ) from None
    except FileNotFoundError as exc:  # DatasetNotFoundError: no such repo, private or gated
        raise SciqaError(
            f"{source}: {_reason(exc)} (a private or gated set: `hf auth login`)"
        ) from None
    except ValueError as exc:
        if spec.split is not None and "Unknown split" in str(exc):
            names = datasets.get_dataset_split_names(spec.name, spec.config)
            _split_named(names, spec.split, source, base)
        raise SciqaError(f"{source}: {_reason(exc)}") from None


def stream_split(source: str, spec: HubSpec | None = None) -> tuple[Any, list[str]]:
    """The split ``source`` names as a ``datasets.IterableDataset`` read from the Hub as
    it is iterated (nothing downloaded first), and its data files, one per shard: their
    URLs name the commit they were resolved at, so they identify the data.

    ``spec`` defaults to ``HubSpec.parse(source)``; its name may also be a local folder
    laid out like a Hub repository (``load_dataset`` reads both the same way).
    """
    spec = spec or HubSpec.parse(source)
    datasets = _datasets()
    if datasets.config.HF_HUB_OFFLINE:
        # Streaming reads the Hub's files as it goes, so no cache can stand in for it.
        include = f" --include '{spec.config}/*'" if spec.config else ""
        raise SciqaError(
            f"{source}: streamed from the Hub, which cannot be reached (HF_HUB_OFFLINE=1); "
            f"on a machine with network run `hf download {spec.name} --repo-type dataset"
            f"{include} --local-dir DIR` and pass DIR{'/' + spec.config if spec.config else ''}"
            f" (a folder of parquet shards) instead ({DOCS})"
        )
    with _hub_errors(source, spec, datasets):
        builder = datasets.load_dataset_builder(spec.name, spec.config)
        data_files = builder.config.data_files or {}
        split = _split_named(list(data_files), spec.split, source, source.partition("@")[0])
        files = [str(file) for file in data_files[split]]
        return builder.as_streaming_dataset(split=split), files


def read_split(source: str) -> pd.DataFrame:
    """The split ``source`` names as a DataFrame, columns as the dataset has them."""
    return load_split(source).to_pandas()


def describe(source: str) -> dict[str, Any]:
    """What a manifest records of a dataset input. ``fingerprint`` changes with its data:
    for a folder, the sha256 of its files; for the Hub, the fingerprint ``datasets``
    gives a loaded split, which hashes the revision the name resolved to."""
    dataset = load_split(source)
    if source.startswith(HF):
        fingerprint = f"datasets:{dataset._fingerprint}"
    else:
        folder, split = _saved_folder(source) or (Path(source), None)
        fingerprint = folder_digest(folder / split if split else folder)
    return {"path": source, "rows": dataset.num_rows, "fingerprint": fingerprint}


def folder_digest(folder: Path, chunk: int = 1 << 20) -> str:
    """sha256 over the names and bytes of every file under ``folder``, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(folder).as_posix()}\0".encode())
        with open(file, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"
