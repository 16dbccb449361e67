"""Shared by the benchmark scripts."""


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]
