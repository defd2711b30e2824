"""The end-to-end demo: ``python -m anoise.demo --help``."""

from .run import main, parse_args, run_demo

# ``run`` stays the module (anoise.demo.run); the function is ``run_demo``.
__all__ = ["main", "parse_args", "run_demo"]
