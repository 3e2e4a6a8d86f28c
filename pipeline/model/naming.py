"""How every report names an element and a shape, so that text, JSON, JUnit, HTML and the
diagnosis all say ``W1[2, 3]`` and ``784×512`` the same way."""

from __future__ import annotations


def element_name(name: str, index) -> str:
    """``W1[2, 3]``, or ``W1`` for a scalar: an element as every report names it."""
    return f"{name}[{', '.join(map(str, index))}]" if len(index) else name


def shape_text(shape) -> str:
    """``784×512``, or ``scalar``."""
    return "×".join(map(str, shape)) or "scalar"
