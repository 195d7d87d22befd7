"""`python -m streamflame ...` is the same as the `streamflame` console script."""
import sys

from streamflame.cli import main

if __name__ == "__main__":
    sys.exit(main())
