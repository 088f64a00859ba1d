"""``python -m archiver``."""

from archiver.launch import console

console()
