"""`python -m tierserve.dev.controlplane` (what the Makefile runs): the same as `tierserve
controlplane`."""

import sys

from tierserve.dev.controlplane.cli import main

sys.exit(main())
