"""The end-to-end demo: ``python -m anoise.demo --help``."""

from .run import main, parse_args, run

__all__ = ["main", "parse_args", "run"]
