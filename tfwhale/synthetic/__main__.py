"""`python -m tfwhale.synthetic OUT_DIR`: write a synthetic photo-ID data set (see dataset.py)."""

import sys

from tfwhale.synthetic.cli import main

if __name__ == "__main__":
    sys.exit(main())
