"""``python -m icetools``: the same as the ``icetools`` command."""

from .cli import main

main()
