"""``python -m bpexp.cli``: the same as the ``bpexp`` console script."""

from bpexp.cli import main

main()
