"""`python -m tierserve.tools.simulate`: the same as `tierserve simulate`."""

import sys

from tierserve.tools.simulate.cli import main

sys.exit(main())
