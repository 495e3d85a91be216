"""`python -m stream ...` is the `intent` command."""

from stream.cli import main

main()
