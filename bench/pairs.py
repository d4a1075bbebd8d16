"""A and B measured in turn, the benchmarks' one way to compare: this machine drifts by 10% within minutes,
so a ratio is only read from runs made side by side, several times, with its median and spread.

    from pairs import interleaved_ratios, summary    (bench/ is on sys.path when a bench script runs)
"""

from __future__ import annotations

import statistics
from typing import Callable


def interleaved_ratios(a: Callable[[], float], b: Callable[[], float], pairs: int,
                       describe: Callable[[int, float, float], str]) -> list[float]:
    """a() / b() for `pairs` pairs, alternating which side runs first so drift favours neither.

    a and b each measure once and return a rate (higher is better); describe(pair, a, b) is the pair's
    printed line, to which the ratio is added.
    """
    ratios = []
    for k in range(pairs):
        if k % 2:
            second, first = b(), a()
        else:
            first, second = a(), b()
        ratios.append(first / second)
        print(f"pair {k + 1}: {describe(k + 1, first, second)}, ratio {ratios[-1]:.3f}", flush=True)
    return ratios


def summary(ratios: list[float]) -> str:
    """'median ratio R over P pairs (min to max)'."""
    return (f"median ratio {statistics.median(ratios):.3f} over {len(ratios)} pairs "
            f"({min(ratios):.3f} to {max(ratios):.3f})")
