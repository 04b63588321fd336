"""``python -m celeriac`` runs the command line."""

from celeriac.cli import main

main()
