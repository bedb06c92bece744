"""``python -m slotkeeper.cli``: the same as the ``slotkeeper`` console script."""

from slotkeeper.cli.main import main

main()
