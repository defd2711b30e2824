"""Regenerate the docs' demo tables and figures from a run of ``python -m anoise.demo``.

    python -m anoise.demo.docs OUT/results.json                # print the markdown report
    python -m anoise.demo.docs OUT/results.json --update README.md docs/demo.md \\
        --images docs/img                                      # regenerate the docs

``--update`` rewrites the blocks between ``<!-- BEGIN demo:NAME -->`` and
``<!-- END demo:NAME -->`` in the given files (the prose around them is left alone);
``--images`` copies the run's figures there as ``demo_*.png``.  The docs' tables come from the
full reproduction (``python -m anoise.demo --full``); regenerate them when its numbers change.
Blocks: every section of the report (:data:`anoise.demo.report.BLOCKS`) and ``headline``, the
README's short table (:func:`headline`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from . import report
from .report import markdown_report, sections, update_blocks
from .zoo import NOISE_OFF, WORST

BLOCKS = report.BLOCKS + ("headline",)


def headline(result: dict) -> str:
    """The README's table: the teacher, the alpha-0 control, the student at the main alpha and
    its noise-off twin, and adversarial fine-tuning; clean, worst case and worst case on all
    draws (cells as in the main table)."""
    k = result["settings"]["draws"]
    student = f"student a={result['settings']['main_alpha']:g}"
    rows = ["teacher", "teacher fine-tuned a=0 (control)", student, student + NOISE_OFF,
            "teacher + PGD adv. fine-tune"]
    columns = [("clean", "clean", "mean"), ("worst case", WORST, "mean"),
               (f"worst case, all {k} draws", WORST, "all_draws")]
    return report.table({row: result["summary"][row] for row in rows}, columns, markdown=True)


def blocks(result: dict) -> dict[str, str]:
    """Every generated block of the docs, by name (:data:`BLOCKS`)."""
    return dict(sections(result, markdown=True), headline=headline(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m anoise.demo.docs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.json written by python -m anoise.demo")
    p.add_argument("--update", nargs="*", default=[], metavar="FILE",
                   help="markdown files whose demo blocks to regenerate")
    p.add_argument("--images", metavar="DIR", help="copy the run's figures to DIR/demo_*.png")
    args = p.parse_args(argv)
    with open(args.results) as f:
        result = json.load(f)
    if not args.update and not args.images:
        print(markdown_report(result))
    generated = blocks(result)
    for path in args.update:
        with open(path) as f:
            text = f.read()
        new = update_blocks(text, generated)
        with open(path, "w") as f:
            f.write(new)
        print(f"updated {path}", file=sys.stderr)
    if args.images:
        os.makedirs(args.images, exist_ok=True)
        for fig in result["figures"]:
            # The figures lie next to results.json, wherever the run was started from.
            src = os.path.join(os.path.dirname(args.results), os.path.basename(fig))
            dst = os.path.join(args.images, "demo_" + os.path.basename(fig))
            shutil.copyfile(src, dst)
            print(f"wrote {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
