"""Offline fine-tuning appliance: the core (no Qt, usable headless)."""

__version__ = "0.1.0"
