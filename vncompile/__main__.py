"""``python -m vncompile`` is the ``vncompile`` command."""

from .cli import main

main()
