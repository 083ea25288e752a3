"""A GGUF file -> a safetensors model folder, one tensor at a time.

transformers' own GGUF loading (``from_pretrained(folder, gguf_file=...)``) dequantises
every tensor into one fp32 model before anything can be saved: for the packaged Qwen
(1.5B) that is a 12.3 GB peak and a 6.7 GB fp32 folder. Here the file is read with the
``gguf`` package's memory-mapped reader, and each tensor is dequantised (a few thousand
rows at a time), given transformers' name for it, cast to the stored dtype and written
into safetensors shards of at most ``SHARD_BYTES``; the peak is about one shard twice plus
the biggest tensor, besides the mapped file (Qwen: 3.7 GB; docs/assets.md).

Everything that decides *what* the folder holds is transformers' own: the config
(``AutoConfig`` from the GGUF metadata), the tokenizer (its GGUF tokenizer conversion),
the GGUF -> transformers tensor names (``get_gguf_hf_weights_map`` on a model built on the
meta device) and the per-architecture tensor fix-ups (its ``TENSOR_PROCESSORS``: llama's
q/k row permutation undone, Gemma's norms stored as ``w + 1``). So the folder equals what
``from_pretrained(gguf_file=...)`` + ``save_pretrained`` would write, tensor for tensor
(tests/sciqa/assets/test_convert.py). Architectures not in :data:`STREAMED` (MoE
processors that merge tensors, transformers' newer packed GGUF path) go through
:func:`convert_with_transformers`, the unbounded path, with a note.

The folder is built in ``.<name>.partial-<pid>`` beside the target and renamed into place
when complete: a killed conversion leaves no folder that loads half a model, and its
partial folder is removed by the next conversion.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sciqa.errors import AssetError
from sciqa.io import follow_umask
from sciqa.outdir import process_alive, publish

# GGUF architectures whose transformers tensor processor maps one tensor to one tensor and
# whose streamed folder was checked against transformers' conversion (llama: SmolLM2,
# gemma3: Gemma-3-270m, qwen2: Qwen2.5-Coder-1.5B).
STREAMED = frozenset({"llama", "qwen2", "gemma3"})
SHARD_BYTES = 1 << 30  # at most ~1 GiB per shard (one bigger tensor gets a shard alone)
DEQUANT_ELEMENTS = 1 << 24  # rows dequantised together: ~64 MB of fp32 at a time
# Python, torch and transformers, and room for the tokenizer conversion (Qwen's: ~1.3 GB,
# before any tensor is read). Plan.ram_needed bounds the measured peaks (docs/assets.md):
# Qwen bf16 3.2 GB anonymous (3.6 GB RSS), need 4.5 GB; Gemma 1.8 GB, need 3.1 GB.
BASE_RAM = 1_000_000_000
DTYPE_BYTES = {"bf16": 2, "fp32": 4}


@dataclass
class Plan:
    """What a streamed conversion will write, worked out from the GGUF's header alone."""

    architecture: str
    reader: Any  # the file's gguf.GGUFReader (memory-mapped)
    config: Any  # the transformers config, from the GGUF metadata
    processor: Any  # transformers' tensor processor for the architecture
    model_class: str  # e.g. Qwen2ForCausalLM
    names: dict[str, str]  # GGUF tensor name -> transformers parameter name, in file order
    shards: list[list[str]]  # GGUF names, per shard
    stored_bytes: int  # the safetensors payload in the stored dtype
    largest: int  # elements of the biggest tensor
    file_bytes: int
    unmapped: list[str] = field(default_factory=list)  # GGUF tensors transformers drops

    def ram_needed(self, dtype: str) -> int:
        """Bytes of available RAM the conversion needs: one shard twice (safetensors
        serialises a copy), the biggest tensor in fp32 and in the stored dtype, and the
        libraries. The mapped GGUF's pages are page cache, which the kernel can drop, so
        they are not counted (they show in RSS: docs/assets.md has both)."""
        shard = min(SHARD_BYTES, self.stored_bytes)
        biggest = self.largest * (4 + DTYPE_BYTES[dtype])
        return 2 * shard + biggest + BASE_RAM


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (``avx512_bf16`` or ``amx_bf16`` among
    the flags of ``/proc/cpuinfo``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def storage_dtype(cpuinfo: str | None = None, warn: bool = True) -> str:
    """``bf16`` where the CPU supports it, else ``fp32`` with one warning line."""
    if cpu_has_bf16(cpuinfo):
        return "bf16"
    if warn:
        print(
            "warning: this CPU has no bf16 support (no avx512_bf16 or amx_bf16 in "
            "/proc/cpuinfo): the converted model is stored in fp32, twice the disk and memory",
            file=sys.stderr,
        )
    return "fp32"


def mem_available(meminfo: str | None = None) -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes; None where unknown."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def require_free_ram(need: int, what: str, available: int | None = None) -> None:
    """Raise :class:`AssetError` when less than ``need`` bytes of RAM are available."""
    available = mem_available() if available is None else available
    if available is not None and available < need:
        raise AssetError(
            f"{what} needs about {need / 1e9:.1f} GB of free RAM and "
            f"{available / 1e9:.1f} GB is available (MemAvailable): stop other jobs and retry"
        )


def gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    field = reader.fields.get("general.architecture")
    return str(field.contents()) if field is not None else ""


def plan(path: Path, dtype: str) -> Plan | None:
    """The streamed conversion of ``path``, or None when its architecture is not one
    this module streams (or transformers' names leave a parameter unfilled)."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    reader = GGUFReader(path)
    architecture = str(reader.fields["general.architecture"].contents())
    if architecture not in STREAMED:
        return None
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    # The processors read head counts by their transformers names, which the config keeps.
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    mapping = get_gguf_hf_weights_map(model, processor)
    names = {t.name: mapping[t.name] for t in reader.tensors if t.name in mapping}
    unmapped = [t.name for t in reader.tensors if t.name not in mapping]
    expected = set(model.state_dict())
    if getattr(config, "tie_word_embeddings", False):
        expected -= {"lm_head.weight"}
    if expected - set(names.values()):
        return None
    width = DTYPE_BYTES[dtype]
    shards: list[list[str]] = [[]]
    size = 0
    stored = largest = 0
    for tensor in reader.tensors:
        if tensor.name not in names:
            continue
        nbytes = int(tensor.n_elements) * width
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(tensor.name)
        size += nbytes
        stored += nbytes
        largest = max(largest, int(tensor.n_elements))
    return Plan(
        architecture,
        reader,
        config,
        processor,
        type(model).__name__,
        names,
        shards,
        stored,
        largest,
        path.stat().st_size,
        unmapped,
    )


def dequantized(tensor: Any) -> Any:
    """A GGUF reader tensor as an fp32 numpy array, dequantised a block of rows at a time
    (``gguf.quants.dequantize`` of a whole tensor holds two fp32 copies of it)."""
    import numpy as np
    from gguf import GGMLQuantizationType, dequantize

    data = tensor.data
    if tensor.tensor_type == GGMLQuantizationType.F32:
        return np.array(data, dtype=np.float32)  # a copy: the mapped file is read-only
    if data.ndim < 2:
        return np.asarray(dequantize(data, tensor.tensor_type), dtype=np.float32)
    first = dequantize(data[:1], tensor.tensor_type)
    out = np.empty((data.shape[0], *first.shape[1:]), dtype=np.float32)
    per_row = max(1, int(np.prod(first.shape[1:])))
    step = max(1, DEQUANT_ELEMENTS // per_row)
    for start in range(0, data.shape[0], step):
        out[start : start + step] = dequantize(data[start : start + step], tensor.tensor_type)
    return out


def stream_tensors(the_plan: Plan, dtype: str) -> Iterator[tuple[str, Any]]:
    """(transformers name, tensor in ``dtype``) for every mapped tensor, in file order."""
    import numpy as np
    import torch

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    for tensor in the_plan.reader.tensors:
        if tensor.name not in the_plan.names:
            continue
        result = the_plan.processor.process(weights=dequantized(tensor), name=tensor.name)
        weights = np.ascontiguousarray(result.weights)
        yield the_plan.names[tensor.name], torch.from_numpy(weights).to(torch_dtype)


def convert_streamed(path: Path, out: Path, the_plan: Plan, dtype: str) -> None:
    """Write the model folder for ``path`` into ``out`` (an empty, private folder)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig

    config = copy.deepcopy(the_plan.config)
    config.architectures = [the_plan.model_class]
    config.dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.save_pretrained(out)
    del tokenizer

    count = len(the_plan.shards)
    files = (
        ["model.safetensors"]
        if count == 1
        else [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]
    )
    shard_of = {name: k for k, names in enumerate(the_plan.shards) for name in names}
    weight_map: dict[str, str] = {}
    buffer: dict[str, Any] = {}
    current, total = 0, 0
    by_hf = {hf: gguf_name for gguf_name, hf in the_plan.names.items()}
    for name, tensor in stream_tensors(the_plan, dtype):
        k = shard_of[by_hf[name]]
        if k != current:
            save_file(buffer, out / files[current], metadata={"format": "pt"})
            buffer, current = {}, k
        buffer[name] = tensor
        weight_map[name] = files[k]
        total += tensor.numel() * tensor.element_size()
    save_file(buffer, out / files[current], metadata={"format": "pt"})
    del buffer
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2) + "\n", encoding="utf-8"
        )


def convert_with_transformers(path: Path, out: Path, dtype: str) -> None:
    """transformers' own path: the whole model dequantised in memory, then saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    folder, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The dequantised weights are plain tensors; the leftover GGUF quantization_config
    # makes save_pretrained refuse ("quantized with gguf and is not serializable").
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _partial_folders(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.partial-*"))


def _remove_stale_partials(target: Path) -> None:
    """Partial folders of conversions whose process is gone (killed, out of memory)."""
    for partial in _partial_folders(target):
        pid = partial.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
            continue  # another process is converting: leave its folder alone
        shutil.rmtree(partial, ignore_errors=True)


def convert_gguf(path: Path, target: Path, dtype: str, *, check_resources: bool = True) -> None:
    """Convert the GGUF at ``path`` into the model folder ``target`` (stored in ``dtype``),
    streamed where the architecture allows it; the folder appears only when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    the_plan = plan(path, dtype)
    from sciqa.assets.registry import require_free_disk

    if the_plan is None:
        print(
            f"note: {path.name} (architecture {gguf_architecture(path)!r}) is converted by "
            "transformers in one piece, not streamed: expect a peak of several times the "
            "fp32 model in RAM",
            file=sys.stderr,
        )
    elif check_resources:
        what = f"converting {path.name} to a {dtype} safetensors folder"
        require_free_disk(target.parent, the_plan.stored_bytes + 50_000_000, what)
        require_free_ram(the_plan.ram_needed(dtype), what)
    print(
        f"converting {path.name} to a {dtype} safetensors folder (once): {target}",
        file=sys.stderr,
    )
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        if the_plan is None:
            convert_with_transformers(path, partial, dtype)
        else:
            convert_streamed(path, partial, the_plan, dtype)
        follow_umask(partial)  # mkdir under a private umask, library temp files
        publish(partial, target)  # readers see the old folder or the new, never neither
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
