"""``python -m polyq`` runs the command line."""

from polyq.cli import main

main()
