"""Triton kernels of anoise (installed as ``anoise.kernels``): the ``"triton"`` backend.

Launchers (the interface of :mod:`anoise.backends`): :func:`forward_batch`,
:func:`forward_scaled`, :func:`backward_batch`, :func:`noise_dot`; :func:`philox_at` exposes
the raw noise stream.  Tile sizes and the reduction split are chosen by heuristics and can be
forced with :data:`config` / :func:`configure` (see :mod:`anoise.kernels._config`).

Importing needs the ``triton`` package but no GPU; on CPU tensors the kernels run only under
``TRITON_INTERPRET=1`` (set before this module is first imported).
"""

try:
    import triton
except ImportError as exc:  # the backend registry reports this message
    raise ImportError(
        f"the triton backend needs the 'triton' package (pip install 'triton>=3.4'): {exc}"
    ) from exc


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(part) for part in v.split("+")[0].split(".")[:2] if part.isdigit())


if _version(triton.__version__) < (3, 4):
    # The stream (SPEC section 3) is tl.randn4x's as of Triton 3.4.
    raise ImportError(f"the triton backend needs triton>=3.4, found {triton.__version__}")

from ._config import KernelConfig, config, configure  # noqa: E402
from ._launch import (  # noqa: E402
    backward_batch,
    forward_batch,
    forward_scaled,
    noise_dot,
    philox_at,
)

__all__ = [
    "KernelConfig",
    "backward_batch",
    "config",
    "configure",
    "forward_batch",
    "forward_scaled",
    "noise_dot",
    "philox_at",
]
