"""``python -m keel`` runs the command line (how jobs start ``keel`` in a subprocess)."""

from keel.cli import main

main()
