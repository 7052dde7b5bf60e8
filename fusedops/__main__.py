"""``python -m fusedops``: the ``fusedops`` command (fusedops/cli.py)."""

from .cli import program

program()
