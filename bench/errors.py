"""User-facing errors: one line, no traceback (see run_bench.py)."""
import difflib


class BenchError(Exception):
    """An error caused by the user's input; printed as one line."""


def did_you_mean(name: str, choices, what: str) -> BenchError:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return BenchError(f"unknown {what} '{name}'{hint} (known: {', '.join(sorted(choices))})")
