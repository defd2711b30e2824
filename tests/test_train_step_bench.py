"""benchmarks/train_step.py: the models it builds and the figures it writes (no timing is
checked: the machine may be shared)."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NO_COMPILER
from torch import nn

import anoise

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is no installed package
from benchmarks import models, train_step  # noqa: E402


def test_models_build_students_with_noise_after_each_layer_and_a_teacher_without_batchnorm():
    for spec in models.MODELS.values():
        teacher = spec.build()
        student = models.student_of(spec, teacher)
        layers = sum(isinstance(m, spec.noise_layers) for m in teacher.modules())
        assert len(anoise.noise_layers(student)) == layers > 0
        plain = models.without_batchnorm(teacher)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
        assert spec.has_batchnorm == any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in teacher.modules())
        x, _ = models.batch(spec, torch.device("cpu"), batch_size=2)
        assert student(x).shape == teacher(x).shape == plain(x).shape == (2, 10)


@pytest.mark.skipif(NO_COMPILER is not None, reason=f"no compiler: {NO_COMPILER}")
def test_main_writes_ratios_per_model(tmp_path, capsys):
    out = tmp_path / "steps.json"
    argv = ["--models", "resnet20", "--quick", "--rounds", "1", "--batch", "2",
            "--threads", str(torch.get_num_threads()), "--json", str(out),
            "--allocator", "default"]  # leave this process's heap settings alone
    assert train_step.main(argv) == 0
    data = json.loads(out.read_text())
    rows = {r["model"]: r for r in data["results"]}
    assert set(rows) == {"resnet20"}
    cost = rows["resnet20"]
    assert set(cost["median_s"]) == {"teacher", "student", "no-batchnorm"}
    assert cost["mode"] == "eager" and cost["batch"] == 2
    assert cost["student_over_teacher"] == pytest.approx(
        cost["rounds"]["student"][0] / cost["rounds"]["teacher"][0])
    assert cost["noise_cost_s"] == pytest.approx(
        cost["median_s"]["student"] - cost["median_s"]["teacher"])
    assert data["meta"]["device"] == "cpu" and "load_before" in data["meta"]
    assert data["meta"]["allocator"] == "default"
    assert set(cost["page_faults_per_step"]) == set(cost["median_s"])
    assert all(f >= 0 for f in cost["page_faults_per_step"].values())
    assert "student/teacher" in capsys.readouterr().out


def test_steady_allocator_takes_where_there_is_glibc():
    """In a process of its own: the settings last for the whole process."""
    code = "from benchmarks.common import steady_allocator; print(steady_allocator())"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
