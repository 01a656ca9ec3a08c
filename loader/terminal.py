"""Text from a target on its way to a terminal: the names in a record or a mapping are the target's."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every non-printable character escaped as Python would write it (\\x1b, \\u202e, …), so
    that no escape sequence a target planted in a name reaches the operator's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
