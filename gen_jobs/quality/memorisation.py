"""How much of a sample is copied verbatim from a training corpus: runs of known windows of words or tokens.

    used by the per-row memorisation columns of text (gpt: `copied_words`) and music (`copied_tokens`)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def windows(items: Sequence, n: int) -> list[tuple]:
    """Every run of n consecutive items, in order."""
    return [tuple(items[i: i + n]) for i in range(len(items) - n + 1)]


class CorpusWindows:
    """A corpus's windows of `span` items (words, token ids), to find runs a sample copies."""

    def __init__(self, sequences: Iterable[Sequence], span: int):
        self.span = span
        self.known = {window for items in sequences for window in windows(items, span)}

    def longest_copied(self, items: Sequence) -> int:
        """Items in the longest run whose every `span`-window occurs in the corpus (0: no such run).

        An upper bound on the longest span copied verbatim (exact when the windows come from one place).
        """
        longest = run = 0
        for window in windows(items, self.span):
            run = run + 1 if window in self.known else 0
            longest = max(longest, run)
        return longest + self.span - 1 if longest else 0
