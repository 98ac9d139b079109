"""Text from files made safe for a terminal: control and format characters shown as escapes.

A header field or tensor name can hold ESC sequences (colours, cursor moves, a cleared screen, a
forged prompt) or bidi overrides; printed raw they act on the terminal instead of being shown.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

# Cc: C0/C1 controls (ESC, CSI, BEL, CR, ...); Cf: format characters (bidi overrides, zero-width).
_UNSAFE = ("Cc", "Cf")


def printable(text: str) -> str:
    """``text`` with every control or format character written as a Python escape (``\\x1b``, ``\\u202e``)."""
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _UNSAFE else ch
        for ch in text
    )
