"""The demo's presets, its progress output and the way to the full reproduction."""

import io
import re

import pytest

from anoise.demo import parse_args, run_demo, zoo
from anoise.demo import progress as P
from anoise.demo.run import FULL_RUN_MINUTES, PRESETS, build_parser, full_run_hint


def test_default_is_the_full_run_for_one_seed_on_fewer_images():
    default, full = parse_args([]), parse_args(["--full"])
    assert (default.preset, full.preset) == ("default", "full")
    assert (default.seeds, default.eval_size) == (1, 250)
    assert (full.seeds, full.eval_size, full.train_size) == (3, 1000, 0)
    # Everything else, training and attacks, is the full run's: same rows, same columns.
    differ = {k for k in PRESETS["full"] if getattr(default, k) != getattr(full, k)}
    assert differ == {"seeds", "eval_size"}
    assert zoo.row_names(default) == zoo.row_names(full)
    # An option still overrides its preset value.
    assert parse_args(["--full", "--eval-size", "10"]).eval_size == 10
    with pytest.raises(SystemExit):
        parse_args(["--full", "--quick"])
    help_text = build_parser().format_help()
    assert "--full" in help_text and f"{FULL_RUN_MINUTES} min" in help_text
    assert "default / --full / --quick / --smoke: 1 / 3 / 2 / 2" in " ".join(help_text.split())


def test_cost_model_follows_the_settings():
    full = parse_args(["--full"])
    noisy, deterministic = P.attack_cost(full, True), P.attack_cost(full, False)
    assert 6 < noisy / deterministic < 7  # measured: about 6.5
    half = parse_args(["--full", "--eval-size", "500"])
    assert P.attack_cost(half, True) == pytest.approx(noisy / 2)
    assert P.training_cost(full, 2000) == pytest.approx(P.training_cost(full, 4000) / 2)
    assert P.noisy_row("student a=0.5") and P.noisy_row("PNI-W (adv. trained)")
    assert not P.noisy_row("student a=0.5, noise off") and not P.noisy_row("teacher")
    rows = zoo.row_names(full)
    one_seed = P.run_cost(parse_args(["--full", "--seeds", "1", "--no-plots"]), rows, 4000)
    assert P.run_cost(parse_args(["--full", "--no-plots"]), rows, 4000) == pytest.approx(
        3 * one_seed)
    assert P.run_cost(full, rows, 4000) > P.run_cost(parse_args([]), rows, 4000) * 3.5


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines_say_the_share_done_and_the_time_left():
    out = io.StringIO()
    progress = P.Progress(400.0, stream=out)
    assert progress.left_text() == "time left not known yet"
    progress._counting_from -= 30  # as if the first quarter took 30 s
    progress.advance(100.0, "trained seed 0")
    line = out.getvalue().splitlines()[-1]
    assert re.fullmatch(r"\[ *\d+\.\ds\] 25% done, about 1\.5 min left: trained seed 0", line)
    progress.advance(1000.0, "attacked teacher (seed 0)")  # never more than all of it
    assert progress.share() == 1.0 and "about 0 s left" in out.getvalue().splitlines()[-1]

    quiet = io.StringIO()
    silent = P.Progress(10.0, stream=quiet, enabled=False)
    silent.say("x")
    silent.advance(5.0, "y")
    assert quiet.getvalue() == ""


def test_progress_on_a_terminal_is_one_bar_with_the_time_left():
    pytest.importorskip("tqdm")
    out = FakeTerminal()
    progress = P.Progress(4000.0, stream=out)
    progress.advance(1000.0, "trained seed 0")
    progress.say("a message above the bar")
    progress.close()
    text = out.getvalue()
    assert "\r" in text and "25%" in text and "left" in text and "trained seed 0" in text
    assert "a message above the bar" in text
    assert "% done" not in text  # no line per task on a terminal


def test_run_shows_progress_and_ends_with_the_way_to_the_full_run(tmp_path, capsys):
    args = parse_args(["--smoke", "--seeds", "1", "--no-plots", "--dataset", "digits",
                       "--out", str(tmp_path)])
    result = run_demo(args)
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if "% done" in line]
    # One line per task: the training, then one per model of the table.
    assert len(progress) == 1 + len(result["rows"])
    assert "trained seed 0" in progress[0] and progress[-1].split("]")[1].startswith(" 100% done")
    # Last, after the tables and the files written (stdout), the way to the full run.
    tail = captured.err.rsplit("% done", 1)[1]
    assert "python -m anoise.demo --full" in tail and f"took {FULL_RUN_MINUTES} min" in tail
    assert "% done" not in captured.out and "--full" not in captured.out


def test_full_run_hint_scales_this_runs_pace():
    default = parse_args([])
    hint = full_run_hint(default, seconds=180.0, n_train=4000)
    assert "python -m anoise.demo --full" in hint and f"{FULL_RUN_MINUTES} min" in hint
    minutes = float(re.search(r"about (\d+) min here", hint).group(1))
    rows = zoo.row_names(default)
    full = parse_args(["--full"])
    ratio = P.run_cost(full, rows, 4000) / P.run_cost(default, rows, 4000)
    expected = 180 * ratio * default.jobs / full.jobs / 60
    assert minutes == round(expected)
