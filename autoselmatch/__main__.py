"""``python -m autoselmatch``: the same as the ``autoselmatch`` command."""

from .cli import main

main()
