"""``python -m seqrec``: the command line (what torchrun runs as ``torchrun ... -m seqrec train ...``)."""

import sys

from seqrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
