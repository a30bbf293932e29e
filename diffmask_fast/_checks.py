"""Argument checks shared by the modules that take lists of words or texts."""

from __future__ import annotations


def refuse_one_string(value: object, name: str, expected: str) -> None:
    """Raise TypeError when ``value`` is one string where a list is expected: iterating it would
    read it character by character, silently."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be {expected}, not one string (a single string, {value!r:.60}, would be "
                        "read character by character; wrap it in a list)")
