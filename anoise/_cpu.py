"""The ``cpu`` backend: launchers of the fused C++ kernels in ``csrc/cpu``.

Importing this module loads the compiled extension (prebuilt by ``setup.py``, or built just in
time); if that fails it raises ImportError and :func:`anoise.backends` reports why.  The four
launchers of the interface (see :mod:`anoise.backends`) also take a keyword-only
``index_base=0``, as the Triton ones do: element ``i`` of the call draws
``randn(seed, index_base + i)``, so a rank draws the noise of its slice of a global batch
(a negative base raises ValueError).  Besides those it exposes:

    eager_batch(x, alpha, seed, eps, stats_grad) -> (y, mean, var)   # forward_batch as one
        # autograd node in C++ (x of shape (N, C, *S)), for plain eager calls
    randn(numel, seed) -> float32 tensor   # eps for logical indices 0 .. numel-1
    draw_at(offsets, seed) -> (words, rand, randn)   # test hook: the stream at int64 offsets
    randn_range(start, count, step, seed)  # test hook: the kernels' vectorised noise path
    isa(), isa_list(), set_isa(name)       # which vectorised build of the kernels runs
"""

from __future__ import annotations

from ._build import load

_ext = load("cpu")

forward_batch = _ext.forward_batch
forward_scaled = _ext.forward_scaled
backward_batch = _ext.backward_batch
noise_dot = _ext.noise_dot
eager_batch = _ext.eager_batch
randn = _ext.randn
randn_range = _ext.randn_range
draw_at = _ext.draw_at
isa = _ext.isa
isa_list = _ext.isa_list
set_isa = _ext.set_isa
