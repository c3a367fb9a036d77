"""One exception type for mistakes a user can fix.

The CLI prints a :class:`SelfsupError` as a single message (what is wrong, what to do)
instead of a stack trace; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class SelfsupError(Exception):
    """A problem with the user's input, data, files or environment, with a fix in the message."""


def closest(name: str, candidates: Iterable[str]) -> str:
    """`" (did you mean 'x'?)"` for the closest candidate, or "" when nothing is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
