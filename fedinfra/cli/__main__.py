"""``python -m fedinfra.cli``: the same entry point as the ``fedinfra`` console script."""

from fedinfra.cli import main

main()
