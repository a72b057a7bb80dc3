"""retro's own exceptions: input it refuses, with the reason.

The ``retro`` command line prints a :class:`RetroError` as one ``retro: error: <reason>`` line
(exit status 2); any other exception is a bug or an environment problem and keeps its traceback.
"""

from __future__ import annotations


class RetroError(ValueError):
    """Bad input (a file, a directory, a setting, an argument), with what is wrong with it.

    A ValueError, so that callers that catch ValueError keep working. The specific kinds:
    :class:`retro.data.CorpusError`, :class:`retro.db.DatabaseError`,
    :class:`retro.train.checkpoint.CheckpointError`, :class:`IndexFileError`."""


class IndexFileError(RetroError, RuntimeError):
    """An index file that cannot be loaded: missing, not a regular file, truncated, corrupt or not
    a retro index. The compiled core raises these as RuntimeError; :meth:`retro.IvfPqIndex.load`
    turns them into this kind, which is a RuntimeError still, so that callers catching it keep
    working."""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1, refused by argparse (before any loading) otherwise."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, least: int) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite float (nan and inf refused)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value
