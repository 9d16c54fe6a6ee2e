"""`python -m attnsae` (what `torchrun ... -m attnsae` runs): the attnsae command."""

from .cli import main

main()
