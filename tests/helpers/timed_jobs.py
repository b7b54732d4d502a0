"""Job functions for tests/test_jobs.py, importable by spawned worker processes."""

import time


def sleep_and_time(seconds: float) -> tuple[float, float]:
    """Sleep; return (start, end) wall-clock times."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()
