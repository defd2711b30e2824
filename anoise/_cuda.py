"""The ``cuda`` backend: launchers of the CUDA kernels in ``csrc/cuda``.

Importing this module loads the compiled extension (prebuilt by ``setup.py`` where torch has
CUDA, or built just in time); if that fails it raises ImportError and :func:`anoise.backends`
reports why.  Besides the four launchers of the interface (see :mod:`anoise.backends`), which
take a keyword-only ``index_base=0`` as in :mod:`anoise._cpu`, it exposes, with the same
meaning as :mod:`anoise._cpu` (``seed``: an int64 tensor of one value on the CUDA device):

    randn(numel, seed) -> float32          # eps at element indices 0 .. numel-1
    randn_range(start, count, step, seed)  # eps at element indices start + j * step
    draw_at(groups, seed) -> (words, rand4, randn4)   # test hook, each (G, 4): the Philox
                                           # words (int64), uniforms and normals of groups

The kernels and their noise stream are in ``csrc/cuda`` (``stream.cuh``: stream 2, one Philox
call per four elements).
"""

from __future__ import annotations

import torch

from ._build import load

if torch.version.cuda is None:
    raise ImportError(f"torch {torch.__version__} is built without CUDA")

_ext = load("cuda")

forward_batch = _ext.forward_batch
forward_scaled = _ext.forward_scaled
backward_batch = _ext.backward_batch
noise_dot = _ext.noise_dot
randn = _ext.randn
randn_range = _ext.randn_range
draw_at = _ext.draw_at
