"""fp32 matmuls on CPU through oneDNN instead of torch's BLAS (``causal_lm.onednn_fp32``).

torch runs an fp32 ``nn.Linear`` on CPU through MKL, which picks its AVX-512 code on Intel
CPUs only: on this project's AMD EPYC it reaches the AVX2 rate, about 105 GFLOP/s per core,
where oneDNN's AVX-512 kernel reaches about 230 on the same shapes, with the same IEEE fp32
arithmetic (another summation order: differences of ~1e-6). bf16 linears already go
through oneDNN. :class:`OneDNNLinear` reroutes ``F.linear`` for the duration of a
``with`` block, so the model itself is not changed and a run can compare both kernels on
one loaded copy. Where the oneDNN op is missing or refuses its inputs, the call goes to
torch's own kernel and later calls in that block do too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _onednn_op() -> Callable[..., torch.Tensor] | None:
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


class OneDNNLinear(TorchFunctionMode):
    """Inside ``with OneDNNLinear():``, fp32 CPU ``F.linear`` calls run oneDNN's kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.op = _onednn_op()
        self.calls = 0  # linears rerouted: what tests check

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and self.op is not None:
            x, weight, bias = _linear_args(args, kwargs)
            if (
                x.dtype == torch.float32
                and weight.dtype == torch.float32
                and x.device.type == "cpu"
                and weight.dim() == 2
                and not (torch.is_grad_enabled() and weight.requires_grad)
            ):
                try:
                    out = self.op(x, weight, bias, "none", [], "")
                except RuntimeError:
                    self.op = None  # an input layout it does not take: torch's kernel from now on
                else:
                    self.calls += 1
                    return out
        return func(*args, **kwargs)


def _linear_args(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    names = ("input", "weight", "bias")
    values = dict(zip(names, args, strict=False)) | dict(kwargs)
    return values["input"], values["weight"], values.get("bias")


def fp32_kernels(model: Any, onednn: bool) -> AbstractContextManager[Any]:
    """The context to run ``model`` in: oneDNN linears for an fp32 model on CPU when
    ``onednn``, else nothing changed."""
    device = getattr(model, "device", None)
    if not onednn or getattr(device, "type", None) != "cpu" or _onednn_op() is None:
        return nullcontext()
    return OneDNNLinear()
