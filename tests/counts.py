"""Counts the fault, race and property suites report at the end of the run (see conftest's terminal summary)."""

from collections import Counter

COUNTS: Counter = Counter()
