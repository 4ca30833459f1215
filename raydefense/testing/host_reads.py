"""Catch a step that reads a tensor's value on the host (on a GPU, a device-to-host sync).

    with HostReads() as reads:
        step()
    assert not reads.calls, reads.calls

On CUDA, `torch.cuda.set_sync_debug_mode("error")` is the ground truth and `HostReads(cuda=True)`
turns it on. On any device, two interposers name what the code asked for: a `TorchFunctionMode`
sees the Python-level reads (`item`, `tolist`, `numpy`, `bool(t)`, `float(t)`, `int(t)`, a tensor
used as an index or in `if`), and a `TorchDispatchMode` sees the ATen ops whose output shape or
value needs the data on the host (`_local_scalar_dense` under every scalar read, `nonzero`,
`masked_select`, `unique`, `equal`, ...), including ones issued from C++ (a clip, an optimizer).
So a CPU-only machine can prove what a GPU run would sync on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Tensor methods whose result is a host value computed from the tensor's data.
_PY_READS = {
    "item",
    "tolist",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "__array__",
}
# ATen ops that read data on the host (a scalar, or a data-dependent output shape).
_ATEN_READS = {
    "_local_scalar_dense",
    "nonzero",
    "nonzero_static",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "equal",
    "is_nonzero",
    "allclose",
    "repeat_interleave",
    "bincount",
    "histc",
    "_assert_async",
}


class _FunctionReads(TorchFunctionMode):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _PY_READS:
            self.calls.append(f"Tensor.{name}")
        return func(*args, **(kwargs or {}))


class _DispatchReads(TorchDispatchMode):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func._schema.name.split("::")[-1]
        if name in _ATEN_READS or (name.startswith("index") and _has_mask(args)):
            self.calls.append(f"aten.{name}")
        return func(*args, **(kwargs or {}))


def _has_mask(args: Any) -> bool:
    """A boolean-mask index (x[mask]): its output shape is the mask's count, read on the host."""
    for a in args:
        items = a if isinstance(a, (list, tuple)) else [a]
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items):
            return True
    return False


class HostReads:
    """Context manager; `calls` lists every host read seen inside it, in order (empty: none).

    cuda=True also sets CUDA's sync debug mode to "error", so a hidden sync the interposers
    cannot see (a blocking device-to-host copy) raises there.
    """

    def __init__(self, cuda: bool = False) -> None:
        self.calls: list[str] = []
        self.cuda = cuda
        self._modes: list[Any] = []
        self._sync_mode = 0

    def __enter__(self) -> HostReads:
        if self.cuda:
            self._sync_mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
        self._modes = [_FunctionReads(self.calls), _DispatchReads(self.calls)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        if self.cuda:
            torch.cuda.set_sync_debug_mode(self._sync_mode)
