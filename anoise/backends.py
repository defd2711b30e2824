"""Backend registry and dispatch.

A fused backend is a module with four launchers, all taking 3-D views ``(N, C, S)`` of the
input (any strides; the logical index of element ``(n, c, s)`` is ``(n * C + c) * S + s``),
per-channel ``(C,)`` tensors in the statistics dtype (float32, float64 for float64 input) and
the seed as an int64 tensor of shape ``(1,)`` on the input's device:

    forward_batch(x3, alpha, seed, eps) -> (y3, mean, var)   # var biased; y3 like x3
    forward_scaled(x3, scale, seed) -> y3                    # y = x + scale_c * eps
    backward_batch(dy3, x3, alpha, mean, sigma, seed) -> (dx3, g)
    noise_dot(dy3, seed) -> g                                # g_c = sum(dy * eps) over c

with ``dx = dy + alpha_c * (x - mean_c) / (M * sigma_c) * g_c`` (SPEC section 2).  The
reference backend is not one of these: it is plain autograd code (``anoise.reference``).
"""

from __future__ import annotations

import importlib
import os
from typing import NamedTuple

import torch


class BackendInfo(NamedTuple):
    """Whether a backend can run here and, if not, why.  Truthy when available."""

    available: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.available


class _Backend:
    def __init__(self, name: str, module: str | None, device_types: tuple[str, ...]):
        self.name = name
        self.module_name = module
        self.device_types = device_types
        self._module = None
        self._error: str | None = None

    def load(self):
        """The launcher module, or None with ``self._error`` set (imports are tried once)."""
        if self.module_name is None or self._module is not None or self._error is not None:
            return self._module
        try:
            self._module = importlib.import_module(self.module_name)
        except ImportError as exc:  # anoise._build's reasons are short and say it all
            self._error = str(exc)
        except Exception as exc:  # triton, a driver or a broken build raise many kinds
            self._error = f"{type(exc).__name__}: {exc}"
        return self._module

    def unusable_reason(self, device_type: str) -> str | None:
        """None if this backend runs on tensors of ``device_type``, else the reason."""
        if device_type not in self.device_types:
            return f"backend {self.name!r} does not run on {device_type} tensors"
        if device_type == "cuda" and not torch.cuda.is_available():
            return f"backend {self.name!r} needs a CUDA device (torch.cuda.is_available() is False)"
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if self.name == "triton" and device_type == "cpu" and not interpreted:
            return "the triton backend runs on CPU tensors only under TRITON_INTERPRET=1"
        if self.module_name is not None and self.load() is None:
            return f"backend {self.name!r} is not available: {self._error}"
        return None


_BACKENDS = {
    "reference": _Backend("reference", None, ("cpu", "cuda", "meta", "mps", "xpu")),
    "triton": _Backend("triton", "anoise.kernels", ("cuda", "cpu")),
    "cuda": _Backend("cuda", "anoise._cuda", ("cuda",)),
    "cpu": _Backend("cpu", "anoise._cpu", ("cpu",)),
}
# Order of preference for backend="auto".  On CUDA, until GPU timings exist, by the static sm_90
# proxy (benchmarks/RESULTS.md, SASS instructions per element): triton's hot loops issue fewer
# than cuda's in the passes that are not memory-bound (fp32 inject 35.1 vs 39.5, g 35 vs 39.8,
# bf16 inject 38.6 vs 42.5), so triton comes first.
_AUTO = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}

BACKEND_NAMES = tuple(_BACKENDS)


def backends() -> dict[str, BackendInfo]:
    """``{name: BackendInfo(available, reason)}`` for every backend.

    A backend is available when it runs on at least one device of this machine.
    """
    out = {}
    for name, b in _BACKENDS.items():
        reasons = [b.unusable_reason(d) for d in ("cpu", "cuda") if d in b.device_types]
        if any(r is None for r in reasons):
            out[name] = BackendInfo(True)
        else:
            out[name] = BackendInfo(False, "; ".join(r for r in reasons if r))
    return out


def resolve(backend: str, device: torch.device) -> str:
    """The backend name to use for a tensor on ``device``; raises ValueError if unusable."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend == "auto":
        for name in _AUTO.get(device.type, ("reference",)):
            if _BACKENDS[name].unusable_reason(device.type) is None:
                return name
        return "reference"
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {backend!r}")
    reason = _BACKENDS[backend].unusable_reason(device.type)
    if reason is not None:
        raise ValueError(f"backend={backend!r} is unavailable: {reason}")
    return backend


@torch.compiler.assume_constant_result
def resolve_for(backend: str, device_type: str) -> str:
    """:func:`resolve` by device type; a constant to ``torch.compile`` (no import is traced).

    Remembered per (backend, device type, ``TRITON_INTERPRET``), the only inputs of the
    answer once a backend's module has been tried: every layer of every step asks.
    """
    if not isinstance(backend, str):
        return resolve(backend, torch.device(device_type))  # raises the TypeError
    key = (backend, device_type, os.environ.get("TRITON_INTERPRET"))
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = resolve(backend, torch.device(device_type))
    return name


_RESOLVED: dict[tuple, str] = {}


def launcher(name: str):
    """The launcher module of a fused backend (after :func:`resolve` accepted it)."""
    return _BACKENDS[name].load()
