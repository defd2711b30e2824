"""csrc/sass_proxy.py: the hot loop and its longest iteration in a cuobjdump listing."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "sass_proxy", Path(__file__).resolve().parent.parent / "csrc" / "sass_proxy.py")
sass_proxy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sass_proxy)


def listing(name, lines):
    body = "\n".join(f"        /*{16 * i:04x}*/                   {ins} ;" for i, ins in
                     enumerate(lines))
    return f"\n\t\tFunction : {name}\n\t.headerflags\t@\"EF_CUDA_SM90\"\n{body}\n"


# Head at 0x0020; a diamond: the long side (4 instructions) and the short one (1), both then
# join at 0x00b0; a warp-divergence trampoline after the EXIT jumps back but closes no loop.
KERNEL = [
    "S2R R0, SR_TID.X",                  # 0x00
    "ISETP.GE.AND P0, PT, R0, 0x10, PT",  # 0x10
    "IADD3 R1, R1, 0x1, RZ",             # 0x20  loop head
    "FSETP.NEU.AND P1, PT, R2, RZ, PT",   # 0x30
    "@!P1 BRA 0xa0",                      # 0x40
    "FMUL R3, R3, R3",                    # 0x50  long side
    "FFMA R3, R3, R3, R3",                # 0x60
    "FADD R3, R3, 1",                     # 0x70
    "BRA.DIV UR4, 0x100",                 # 0x80  not followed
    "BRA 0xb0",                           # 0x90
    "MOV R3, RZ",                         # 0xa0  short side
    "NOP",                                # 0xb0  join (not counted)
    "ISETP.LT.AND P0, PT, R1, R4, PT",    # 0xc0
    "@P0 BRA 0x20",                       # 0xd0  back edge
    "EXIT",                               # 0xe0
    "BRA 0xe0",                           # 0xf0
    "MOV R5, R6",                         # 0x100 trampoline
    "BRA 0x50",                           # 0x110 back, but not a loop
]


def test_longest_iteration_of_the_hot_loop():
    funcs = sass_proxy.functions(listing("_Z6kernelv", KERNEL))
    count, head, back = sass_proxy.hot_loop_count(funcs["_Z6kernelv"])
    assert (head, back) == (0x20, 0xD0)
    # 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, then 0xc0, 0xd0 (the NOP is free).
    assert count == 10


def test_no_loop_is_an_error():
    funcs = sass_proxy.functions(listing("_Z1kv", ["MOV R1, R2", "EXIT", "BRA 0x10"]))
    with pytest.raises(ValueError, match="no loop"):
        sass_proxy.hot_loop_count(funcs["_Z1kv"])


def test_report_rows_and_roofs():
    name = "_ZN11anoise_cuda11inject_flatIfLb1EjEEvv"
    lines = sass_proxy.report(listing(name, KERNEL), markdown=True)
    row = next(line for line in lines if line.startswith("| inject | NCHW | fp32"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:6] == ["10", "2.5", f"{33.5e12 / 2.5 / 1e9:.0f}"]
    assert cells[7] == "memory"
    assert any("0 matches" in line for line in lines)  # kernels absent from this listing


def test_statistics_count_their_first_loop():
    """The statistics kernels carry a second, longer copy of their loop (the reduction on
    rescaled values, run only when M2 overflows): their hot loop is the first one."""
    two_loops = [
        "IADD3 R1, R1, 0x1, RZ",             # 0x00  hot loop
        "FFMA R3, R2, R2, R3",               # 0x10
        "ISETP.LT.AND P0, PT, R1, R4, PT",   # 0x20
        "@P0 BRA 0x0",                       # 0x30
        "IADD3 R1, R1, 0x1, RZ",             # 0x40  rescaled copy
        "FMUL R2, R2, 5.42e-20",             # 0x50
        "FFMA R3, R2, R2, R3",               # 0x60
        "ISETP.LT.AND P0, PT, R1, R4, PT",   # 0x70
        "@P0 BRA 0x40",                      # 0x80
        "EXIT",                              # 0x90
    ]
    funcs = sass_proxy.functions(listing("_Z1kv", two_loops))
    assert sass_proxy.hot_loop_count(funcs["_Z1kv"], first=True) == (4, 0x0, 0x30)
    assert sass_proxy.hot_loop_count(funcs["_Z1kv"]) == (5, 0x40, 0x80)
    name = "_ZN11anoise_cuda12stats_planesIfLb1EjEEvv"
    row = next(line for line in sass_proxy.report(listing(name, two_loops), markdown=True)
               if line.startswith("| statistics | NCHW | fp32"))
    assert row.split("|")[4].strip() == "4"
