"""``python -m dlogit`` runs the CLI."""

from dlogit.cli import main

main()
