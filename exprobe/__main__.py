"""`python -m exprobe`."""

from exprobe.cli import main

main()
