"""``python -m ddmq`` runs the ddmq command."""
from .cli import main

main()
