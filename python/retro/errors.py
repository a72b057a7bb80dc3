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
