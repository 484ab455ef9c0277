"""Human-readable sizes and counts, the same in the CLI, the GUI and reports."""

from __future__ import annotations


def format_bytes(value: float | None) -> str:
    """Binary size: ``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(n: int | None) -> str:
    """Large counts such as parameters: ``134515008`` -> ``134.5M``; None -> ``-``."""
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)
