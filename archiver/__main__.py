"""``python -m archiver``."""

from archiver.cli import console

console()
