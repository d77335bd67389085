"""Allow ``python -m digest``."""

from digest.edges.cli import main

main()
