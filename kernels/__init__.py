"""Triton kernels of anoise (installed as ``anoise.kernels``)."""

raise ImportError("the triton backend is not built yet")
