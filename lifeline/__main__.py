"""`python -m lifeline`: the `lifeline` command."""

from lifeline.cli import main

main()
