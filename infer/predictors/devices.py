"""Which devices and dtype a run uses: ``infer.device``, ``infer.devices``, ``infer.dtype``.

Every name is checked against this machine before anything loads, and a refusal names
the config key it came from.
"""

from __future__ import annotations

import torch

from infer.errors import InferError

KINDS = ("cpu", "cuda", "mps")


def _present(device: torch.device, key: str, name: str) -> None:
    """Refuse a device this machine does not have, naming the config key."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InferError(f"{key} = {name!r} but no CUDA device is visible; use 'cpu'")
        if device.index is not None and device.index >= count:
            visible = ", ".join(f"cuda:{i}" for i in range(count))
            raise InferError(
                f"{key} = {name!r} but only {count} CUDA device(s) are visible ({visible})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InferError(f"{key} = {name!r} but MPS is not available here; use 'cpu'")


def parse_device(name: str, key: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``, present on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in KINDS:
        raise InferError(f"{key} = {name!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    _present(device, key, name)
    return torch.device("cpu") if device.type == "cpu" else device


def resolve_devices(device: str, devices: list[str] | None) -> list[torch.device]:
    """The devices a member's questions are split over: ``infer.devices`` when set,
    else the one ``infer.device`` (``"auto"``: cuda when visible, else cpu)."""
    if devices is None:
        if device == "auto":
            return [torch.device("cuda" if torch.cuda.is_available() else "cpu")]
        return [parse_device(device, "infer.device")]
    if not devices:
        raise InferError(
            "infer.devices = []: name at least one device (e.g. ['cuda:0', 'cuda:1']) "
            "or leave it unset to use infer.device"
        )
    parsed = [parse_device(name, f"infer.devices[{i}]") for i, name in enumerate(devices)]
    kinds = sorted({d.type for d in parsed})
    if len(kinds) > 1:
        raise InferError(
            f"infer.devices = {devices} mixes {' and '.join(kinds)}; the shards must run "
            "the same dtype and speed, so list devices of one kind"
        )
    if device != "auto" and device != kinds[0] and any(name != device for name in devices):
        raise InferError(
            f"infer.device = {device!r} conflicts with infer.devices = {devices}; "
            f"set infer.device to 'auto' (or {kinds[0]!r}) when infer.devices is set"
        )
    return parsed


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
