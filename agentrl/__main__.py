"""``python -m agentrl`` (what ``torchrun -m agentrl run CONFIG`` runs on every rank)."""

from agentrl.cli import main

main()
