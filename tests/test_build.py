"""How the C++ extension's build fails: quickly, once per build cache, with a short reason."""

import pytest

from anoise import _build


def test_short_reason_picks_the_compiler_error():
    log = ("Error building extension 'anoise_C_cpu': [1/2] c++ -c adaptive_noise.cpp\n"
           "FAILED: adaptive_noise.o\n"
           "adaptive_noise.cpp:3:5: error: 'x' was not declared in this scope\n"
           "ninja: build stopped: subcommand failed.\n")
    assert _build.short_reason(log) == "adaptive_noise.cpp:3:5: error: 'x' was not declared " \
                                       "in this scope"
    assert _build.short_reason("[1/1] c++ x.cpp\n/bin/sh: 1: c++: not found\n") == \
        "/bin/sh: 1: c++: not found"


def test_compiler_problem_names_what_is_missing():
    assert "not found on PATH" in _build.compiler_problem("anoise-no-such-compiler")
    assert "cannot build OpenMP C++ code" in _build.compiler_problem("false")


def test_failed_jit_build_is_recorded_and_not_retried(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # found on PATH, compiles nothing
    with pytest.raises(ImportError, match="cannot build OpenMP C\\+\\+ code") as first:
        _build._jit("cpu")
    logs = list(tmp_path.glob("anoise_C_cpu/build-failed-*.log"))
    assert len(logs) == 1 and str(logs[0]) in str(first.value)
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "To get it: install a C++ compiler" in said
    # The next try (another process would do the same) reads the record: no probe, no message.
    monkeypatch.setattr(_build, "compiler_problem", lambda *a: pytest.fail("retried"))
    with pytest.raises(ImportError, match="recorded when a build of these sources was tried"):
        _build._jit("cpu")
    assert capsys.readouterr().err == ""
    # Another compiler is another key: it is tried.
    monkeypatch.setenv("CXX", "anoise-no-such-compiler")
    monkeypatch.setattr(_build, "compiler_problem", lambda *a: "probed again")
    with pytest.raises(ImportError, match="probed again"):
        _build._jit("cpu")
