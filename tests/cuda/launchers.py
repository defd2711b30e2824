"""The ``cuda`` backend's launchers over the emulated kernels (emulate.py): the same calls and
allocations as csrc/cuda/adaptive_noise_binding.cpp, on CPU tensors."""

from __future__ import annotations

import ctypes

import torch

_DT = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_P, _I, _U, _D, _C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_double, ctypes.c_int


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(0)


def _view(t):
    return [_ptr(t), *t.stride()]


def _stat(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


class Emulated:
    """forward_batch, forward_scaled, noise_dot, backward_batch, randn, randn_range, draw_at."""

    __name__ = "emulated"

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        sig = {
            "emu_stats_partials": (_I, [_I, _I, _I, _P, _I, _I, _I]),
            "emu_dot_partials": (_I, [_I, _I, _I, _P, _I, _I, _I, _U]),
            "emu_forward_stats": (_C, [_C, _I, _I, _I, _P, _I, _I, _I, _P, _P, _P, _D, _P, _P,
                                       _P]),
            "emu_apply_noise": (_C, [_C, _I, _I, _I, _P, _I, _I, _I, _P, _I, _I, _I, _P, _P,
                                     _U]),
            "emu_noise_dot": (_C, [_C, _I, _I, _I, _P, _I, _I, _I, _P, _U, _P, _P, _P, _P, _P]),
            "emu_input_grad": (_C, [_C, _I, _I, _I, _P, _I, _I, _I, _P, _I, _I, _I, _P, _I, _I,
                                    _I, _P, _P]),
            "emu_randn": (_C, [_P, _I, _I, _I, _P]),
            "emu_draw_at": (_C, [_P, _I, _P, _P, _P, _P]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args

    @staticmethod
    def _ok(err):
        assert err == 0, f"emulated launch failed with cudaError {err}"

    def forward_batch(self, x3, alpha, seed, eps, index_base=0):
        st = _stat(x3.dtype)
        N, C, S = x3.shape
        y = torch.empty_like(x3)
        mean, var, scale = (torch.empty(C, dtype=st) for _ in range(3))
        np_ = self.lib.emu_stats_partials(N, C, S, *_view(x3))
        pmean, pm2 = torch.empty(np_, dtype=st), torch.empty(np_, dtype=st)
        self._ok(self.lib.emu_forward_stats(_DT[x3.dtype], N, C, S, *_view(x3), _ptr(pmean),
                                            _ptr(pm2), _ptr(alpha), eps, _ptr(mean), _ptr(var),
                                            _ptr(scale)))
        self._ok(self.lib.emu_apply_noise(_DT[x3.dtype], N, C, S, *_view(x3), *_view(y),
                                          _ptr(scale), _ptr(seed), index_base))
        return y, mean, var

    def forward_scaled(self, x3, scale, seed, index_base=0):
        N, C, S = x3.shape
        y = torch.empty_like(x3)
        self._ok(self.lib.emu_apply_noise(_DT[x3.dtype], N, C, S, *_view(x3), *_view(y),
                                          _ptr(scale), _ptr(seed), index_base))
        return y

    def _dot(self, dy3, seed, base, alpha=None, sigma=None):
        N, C, S = dy3.shape
        st = _stat(dy3.dtype)
        g = torch.zeros(C, dtype=st)
        coef = torch.empty(C, dtype=st) if alpha is not None else None
        part = torch.empty(self.lib.emu_dot_partials(N, C, S, *_view(dy3), base), dtype=st)
        self._ok(self.lib.emu_noise_dot(_DT[dy3.dtype], N, C, S, *_view(dy3), _ptr(seed), base,
                                        _ptr(part), _ptr(g), _ptr(alpha), _ptr(sigma),
                                        _ptr(coef)))
        return g, coef

    def noise_dot(self, dy3, seed, index_base=0):
        return self._dot(dy3, seed, index_base)[0]

    def backward_batch(self, dy3, x3, alpha, mean, sigma, seed, index_base=0):
        N, C, S = x3.shape
        g, coef = self._dot(dy3, seed, index_base, alpha, sigma)
        dx = torch.empty_like(x3)
        self._ok(self.lib.emu_input_grad(_DT[x3.dtype], N, C, S, *_view(dy3), *_view(x3),
                                         *_view(dx), _ptr(coef), _ptr(mean)))
        return dx, g

    def randn_range(self, start, count, step, seed):
        out = torch.empty(count, dtype=torch.float32)
        self._ok(self.lib.emu_randn(_ptr(out), count, start, step, _ptr(seed)))
        return out

    def randn(self, numel, seed):
        return self.randn_range(0, numel, 1, seed)

    def draw_at(self, groups, seed):
        g = groups.contiguous()
        n = g.numel()
        words = torch.empty(n, 4, dtype=torch.int64)
        rand4, randn4 = torch.empty(n, 4), torch.empty(n, 4)
        self._ok(self.lib.emu_draw_at(_ptr(g), n, _ptr(seed), _ptr(words), _ptr(rand4),
                                      _ptr(randn4)))
        return words, rand4, randn4
