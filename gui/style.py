"""The few colours every page shares, so that "something is wrong" looks the same everywhere."""

from __future__ import annotations

ERROR_COLOUR = "#b00020"
"""Refusals, failures and failed checks (a dark red that stays readable on white)."""

ERROR_STYLE = f"color: {ERROR_COLOUR};"
"""Style sheet of a label that reports an error."""
