"""`python -m tierserve`: the same command line as the `tierserve` script."""

from tierserve.cli import main

main()
