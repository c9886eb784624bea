"""`python -m batchgate …`: the `batchgate` command, as `up` starts its children."""

import sys

from batchgate.cli import main

sys.exit(main())
