"""The README's copy-paste commands, read from README.md itself so that CI cannot drift from it.

Each command is the indented code line right after a ``<!-- command: NAME -->`` marker:

    python3 .ci/readme_commands.py            # every NAME and its command
    python3 .ci/readme_commands.py NAME       # the command alone, for `bash -c`

Standard library only: CI runs this before any virtual environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^<!-- command: ([\w-]+) -->\s*$")


def commands(text: str) -> dict[str, str]:
    """``{name: command}`` in README order; raises ValueError on a malformed marker."""
    lines = text.splitlines()
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        name = m.group(1)
        rest = [ln for ln in lines[i + 1:] if ln.strip()]
        if not rest or not rest[0].startswith("    "):
            raise ValueError(f"README marker {name!r} is not followed by an indented command")
        if name in found:
            raise ValueError(f"README has two commands named {name!r}")
        found[name] = rest[0].strip()
    return found


def main(argv: list[str]) -> int:
    found = commands(README.read_text())
    if not argv:
        for name, cmd in found.items():
            print(f"{name}: {cmd}")
        return 0
    if argv[0] not in found:
        print(f"README.md has no command {argv[0]!r} (it has {sorted(found)})", file=sys.stderr)
        return 2
    print(found[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
