"""``python -m ddmq`` runs the ddmq command."""
from .entry import main

main()
