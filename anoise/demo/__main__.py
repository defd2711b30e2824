import sys

from .run import main

if __name__ == "__main__":  # seeds may run in spawned processes, which import this module
    sys.exit(main())
