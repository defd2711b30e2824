"""A GPU-less proxy for the speed of the CUDA kernels: SASS instructions per element.

Reads ``cuobjdump -sass`` output of csrc/cuda/adaptive_noise.cu compiled for sm_90 and, for
the hot loop of each kernel in HOT (the instantiation that runs for dense inputs whose rows
hold whole Philox groups), counts the instructions one loop iteration issues:

* the loop is the backward branch enclosing the most instructions (the grid- or
  chunk-stride loop; every hot loop is marked ``#pragma unroll 1``, so it is one loop); for
  the statistics, the first loop: the second is the same reduction on rescaled values, run
  only when a chunk's M2 overflows float;
* inside it, the longest path from the loop head to that branch over the forward control
  flow (the noise path, not the copy path taken where scale == 0), NOPs excluded;
* divided by the elements one iteration handles (4: one Philox group, or one 4-vector).

The roofs: an H200 SXM issues about 33.5 T thread-instructions/s (132 SMs x 4 schedulers x
32 lanes x 1.98 GHz); its copy bandwidth is about 4.3 TB/s.  A loop is memory-bound when
instructions/element <= 33.5e12 / (4.3e12 / bytes per element).  This is a static count: it
ignores latency, occupancy, dual issue and pipe throughput (MUFU, conversions), so it bounds
speed from above; it is not a measurement.

    usage: python3 csrc/sass_proxy.py SASS_FILE [--markdown]
"""

from __future__ import annotations

import re
import sys

ISSUE_RATE = 33.5e12  # thread-instructions / s
COPY_BW = 4.3e12  # bytes / s

# (pass, layout, kernel-name regex, dtype, bytes moved per element, elements per iteration)
HOT = [
    ("inject", "NCHW", r"inject_flatIfLb1Ej", "fp32", 8, 4),
    ("inject", "NCHW", r"inject_flatI13__nv_bfloat16Lb1Ej", "bf16", 4, 4),
    ("inject", "channels_last", r"inject_runsIfLb1ELb0E", "fp32", 8, 4),
    ("inject", "channels_last", r"inject_runsI13__nv_bfloat16Lb1ELb0E", "bf16", 4, 4),
    ("statistics", "NCHW", r"stats_planesIfLb1Ej", "fp32", 4, 4),
    ("statistics", "NCHW", r"stats_planesI13__nv_bfloat16Lb1Ej", "bf16", 2, 4),
    ("statistics", "channels_last", r"stats_rowsIfLb1Ej", "fp32", 4, 4),
    ("statistics", "channels_last", r"stats_rowsI13__nv_bfloat16Lb1Ej", "bf16", 2, 4),
    ("g = sum(dy*eps)", "NCHW", r"dot_planesIfLb1Ej", "fp32", 4, 4),
    ("g = sum(dy*eps)", "NCHW", r"dot_planesI13__nv_bfloat16Lb1Ej", "bf16", 2, 4),
    ("g = sum(dy*eps)", "channels_last", r"dot_rowsIfLb1Ej", "fp32", 4, 4),
    ("g = sum(dy*eps)", "channels_last", r"dot_rowsI13__nv_bfloat16Lb1Ej", "bf16", 2, 4),
    ("dx", "dense", r"dx_flatIfLb1Ej", "fp32", 12, 4),
    ("dx", "dense", r"dx_flatI13__nv_bfloat16Lb1Ej", "bf16", 6, 4),
]

_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")


def functions(text: str) -> dict[str, list[tuple[int, str]]]:
    """{mangled name: [(address, instruction)]} of a ``cuobjdump -sass`` listing (whose
    branches name absolute addresses)."""
    out = {}
    for chunk in re.split(r"\n\s*Function : ", text)[1:]:
        name, body = chunk.split("\n", 1)
        out[name.strip()] = [(int(a, 16), ins.strip()) for a, ins in _INSN.findall(body)]
    return out


def _opcode(ins: str) -> str:
    parts = ins.split()
    return parts[1] if parts[0].startswith("@") else parts[0]


def _branch_target(ins: str) -> int | None:
    # BRA.DIV (taken only when the warp has diverged) and CALL (to the slow path of a
    # division) are not followed: a converged warp on ordinary inputs does not take them.
    if _opcode(ins) != "BRA":
        return None
    m = re.search(r"BRA\s+(0x[0-9a-f]+)", ins)
    return int(m.group(1), 16) if m else None


def _longest_path(insns: list[tuple[int, str]], head: int, back: int) -> int | None:
    """Instructions (NOPs excluded) on the longest path from `head` to the back edge at
    `back`, over forward edges; None when the back edge is not reachable from the head."""
    body = [(a, i) for a, i in insns if head <= a <= back]
    index = {a: k for k, (a, _) in enumerate(body)}
    longest: list[int | None] = [None] * len(body)
    for k in range(len(body) - 1, -1, -1):
        addr, ins = body[k]
        op = _opcode(ins)
        cost = 0 if op == "NOP" else 1
        if k == len(body) - 1:
            longest[k] = cost
            continue
        tgt = _branch_target(ins)
        predicated = ins.startswith("@")
        succ = []
        if tgt is not None:
            if addr < tgt <= back:
                succ.append(index[tgt])
            if predicated:
                succ.append(k + 1)
        elif op != "EXIT" or predicated:
            succ.append(k + 1)
        reach = [longest[j] for j in succ if longest[j] is not None]
        longest[k] = cost + max(reach) if reach else None
    return longest[0]


def hot_loop_count(insns: list[tuple[int, str]], first: bool = False) -> tuple[int, int, int]:
    """(instructions one iteration of the hot loop issues, loop head, back-edge address): the
    loop whose longest iteration is longest, or with ``first`` the first loop in address order
    (backward jumps that close no loop are skipped)."""
    loops = []
    for addr, ins in insns:
        tgt = _branch_target(ins)
        if tgt is not None and tgt < addr:
            count = _longest_path(insns, tgt, addr)
            if count is not None:
                loops.append((count, tgt, addr))
    if not loops:
        raise ValueError("no loop found")
    if first:
        return min(loops, key=lambda loop: loop[1])
    return max(loops, key=lambda loop: loop[0])


def report(text: str, markdown: bool = False) -> list[str]:
    funcs = functions(text)
    rows = []
    for pass_, layout, pattern, dtype, nbytes, per_iter in HOT:
        names = [n for n in funcs if re.search(pattern, n)]
        if len(names) != 1:
            rows.append((pass_, layout, dtype, None, None, None, None, f"{len(names)} matches"))
            continue
        try:
            count, _, _ = hot_loop_count(funcs[names[0]], first=pass_ == "statistics")
        except ValueError as exc:
            rows.append((pass_, layout, dtype, None, None, None, None, str(exc)))
            continue
        per_elem = count / per_iter
        compute = ISSUE_RATE / per_elem / 1e9  # G elements / s
        memory = COPY_BW / nbytes / 1e9
        bound = "memory" if memory <= compute else "instructions"
        rows.append((pass_, layout, dtype, count, per_elem, compute, memory, bound))
    # Cells as text; "?" where the loop could not be counted (the reason in the last cell).
    cells = [[p, lay, dt] + (["?"] * 4 if n is None else
                             [str(n), f"{e:.1f}", f"{c:.0f}", f"{m:.0f}"]) + [b]
             for p, lay, dt, n, e, c, m, b in rows]
    if markdown:
        head = ["pass", "layout", "dtype", "SASS / iteration (4 elements)", "SASS / element",
                "instruction roof (G elements/s)", "memory roof (G elements/s)", "bound by"]
        return ["| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *cells]]
    head = ["pass", "layout", "dtype", "SASS/it", "SASS/elt", "instr roof", "mem roof",
            "bound (G elements/s on an H200)"]
    widths = [16, 14, 5, 7, 8, 10, 9]
    return ["  " + " ".join(f"{v:<{w}}" if k < 3 else f"{v:>{w}}" for k, (v, w) in
                            enumerate(zip(r[:7], widths, strict=True))) + "  " + r[7]
            for r in [head, *cells]]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    text = open(argv[0]).read()
    print("\n".join(report(text, markdown="--markdown" in argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
