"""`python -m tfrecords_builder` = the build-tfrecords command."""

import sys

from tfrecords_builder.cli import main

if __name__ == "__main__":
    sys.exit(main())
