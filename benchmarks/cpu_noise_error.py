"""Worst error of the `cpu` backend's normals against the noise stream evaluated in float64.

    python -m benchmarks.cpu_noise_error [--draws 100000000] [--isa all]

The stream (SPEC section 3) is computed here from the backend's own uniforms, which the tests
hold bit-exact to Triton's: the float32 steps of the definition (the uniforms, the clamp at
1e-7, t = 6.2831855f * u) are kept, and log, sqrt, cos and sin are evaluated in float64.  The
backend's normals come from its `draw_at` hook and, for the same indices, from `randn_range`
(the kernels' contiguous path), which must give the same bits.  Draws cover group indices from
0 and from near 2**32 and 2**61, under several seeds.  Prints the worst absolute error, the worst
relative error, and the worst error in units of the SPEC bound 1e-5 + 1e-5 * |eps| (<= 1 passes).
"""

from __future__ import annotations

import argparse
import math

import torch

from anoise import _cpu

CHUNK = 1 << 22  # groups per draw_at call (4 normals each)
STARTS = [0, 2**32 - 3 * 2**20, 2**61 - 2**27]
SEEDS = [0, 0x5EED1234, 2**63 + 12345, 2**64 - 1]


def stream_f64(rand4: torch.Tensor) -> torch.Tensor:
    """randn4x in float64 from the (exact) float32 uniforms of each group, shape (G, 4)."""
    a = rand4[:, 0::2].clamp_min(torch.tensor(1e-7, dtype=torch.float32)).double()
    t = (torch.tensor(6.2831855, dtype=torch.float32) * rand4[:, 1::2]).double()
    r = torch.sqrt(-2.0 * torch.log(a))
    return torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=-1).flatten(1)


def measure(draws: int) -> dict[str, float]:
    worst = {"abs": 0.0, "rel": 0.0, "bound": 0.0, "draws": 0}
    per_case = math.ceil(draws / 4 / (len(STARTS) * len(SEEDS)))
    for seed in SEEDS:
        seed_t = torch.tensor([seed - 2**64 if seed >= 2**63 else seed], dtype=torch.int64)
        for start in STARTS:
            for g0 in range(start, start + per_case, CHUNK):
                n = min(CHUNK, start + per_case - g0)
                groups = torch.arange(g0, g0 + n, dtype=torch.int64)
                _, rand4, randn4 = _cpu.draw_at(groups, seed_t)
                fast = _cpu.randn_range(4 * g0, 4 * n, 1, seed_t)
                if not torch.equal(fast, randn4.flatten()):
                    raise AssertionError(f"randn_range differs from draw_at at group {g0}")
                want = stream_f64(rand4)
                err = (randn4.double() - want).abs()
                nonzero = want != 0
                rel = err[nonzero] / want[nonzero].abs()
                bound = err / (1e-5 + 1e-5 * want.abs())
                worst["abs"] = max(worst["abs"], err.max().item())
                worst["rel"] = max(worst["rel"], rel.max().item())
                worst["bound"] = max(worst["bound"], bound.max().item())
                worst["draws"] += 4 * n
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=float, default=1e8)
    p.add_argument("--isa", default="all", help="an instruction-set build, or all")
    args = p.parse_args()
    for isa in _cpu.isa_list() if args.isa == "all" else [args.isa]:
        _cpu.set_isa(isa)
        w = measure(int(args.draws))
        print(f"{isa}: {w['draws']:,} normals: worst abs error {w['abs']:.3g}, worst rel error "
              f"{w['rel']:.3g}, worst error / (1e-5 + 1e-5 |eps|) = {w['bound']:.3g}")


if __name__ == "__main__":
    main()
