"""retro's own exceptions: input it refuses, with the reason.

The ``retro`` command line prints a :class:`RetroError` as one ``retro: error: <reason>`` line
(exit status 2); any other exception is a bug or an environment problem and keeps its traceback.
"""

from __future__ import annotations


class RetroError(ValueError):
    """Bad input (a file, a directory, a setting, an argument), with what is wrong with it.

    A ValueError, so that callers that catch ValueError keep working. The specific kinds:
    :class:`retro.data.CorpusError`, :class:`retro.db.DatabaseError`,
    :class:`retro.train.checkpoint.CheckpointError`."""
