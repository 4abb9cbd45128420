"""Counts behind the fault summary line that tests/conftest.py prints at the end of a pytest session.

Tests in test_faults.py and test_bad_inputs.py call `record` for what really ran: a fault injected into a real
process, a run that recovered from it to the uninterrupted result, a bad input that met its documented handling,
and segments (or weights) that differed from the uninterrupted run or went missing (must stay 0).
"""

COUNTS = {"faults injected": 0, "runs recovered": 0, "bad inputs tried": 0, "data lost": 0}


def record(faults: int = 0, recovered: int = 0, bad_inputs: int = 0, lost: int = 0) -> None:
    COUNTS["faults injected"] += faults
    COUNTS["runs recovered"] += recovered
    COUNTS["bad inputs tried"] += bad_inputs
    COUNTS["data lost"] += lost


def summary_line() -> str | None:
    """`FAULT SUMMARY: faults injected N, runs recovered M, bad inputs tried K, data lost L`, or None if nothing ran."""
    if not any(COUNTS.values()):
        return None
    return "FAULT SUMMARY: " + ", ".join(f"{name} {count}" for name, count in COUNTS.items())
