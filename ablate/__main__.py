"""`python -m ablate` is the `ablate` command."""

from .cli import main

main()
