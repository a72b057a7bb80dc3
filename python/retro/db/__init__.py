"""The retrieval database: corpus -> chunks -> embeddings -> IVF-PQ -> neighbours.

``build_db(out, BuildConfig(...))`` builds or resumes a database directory, ``open_db(path)`` reads
one, ``query_db(db, corpus, out)`` searches another corpus against it. See database.py for the
directory layout and build.py for the stages.
"""

from retro.data.corpus import CorpusError
from retro.db.build import BuildConfig, build_db
from retro.db.database import Database, SplitView, open_db
from retro.db.manifest import FORMAT_VERSION, DatabaseError
from retro.db.query_set import QuerySet, open_query_set, query_db

__all__ = [
    "FORMAT_VERSION",
    "BuildConfig",
    "CorpusError",
    "Database",
    "DatabaseError",
    "QuerySet",
    "SplitView",
    "build_db",
    "open_db",
    "open_query_set",
    "query_db",
]
