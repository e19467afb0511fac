"""Proof of Time-Lock samples and capability challenges: what the agent proves, and how."""
