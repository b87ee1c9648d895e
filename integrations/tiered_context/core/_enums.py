"""The modes a memory is configured with (str Enums: ``"inline"`` works where
``Compaction.INLINE`` does)."""

from __future__ import annotations

from enum import Enum

__all__ = ["Compaction", "Compression", "StoreKind"]


class Compaction(str, Enum):
    """Where the 2.0x compression batch runs: a background thread, or inline (deterministic)."""

    BACKGROUND = "background"
    INLINE = "inline"


class Compression(str, Enum):
    """What gets compressed forms (originals always stay archived in L3).

    ``off``: nothing; the ladder retires the oldest turns to L3 verbatim.
    ``working-set``: the ladder's L2 forms of the working set only.
    ``all``: also a compressed form of every retrieved candidate below the best few, so
    more evidence fits a small budget (the packer upgrades the best back to originals).
    """

    OFF = "off"
    WORKING_SET = "working-set"
    ALL = "all"


class StoreKind(str, Enum):
    """The archive of a memory directory (`path=`), chosen explicitly and recorded in the
    directory when it is created, so installing a package never changes a memory's format.

    ``journal`` (default): the core's JSONL journal (`LocalColdStore`). ``qdrant``:
    embedded Qdrant (the `[qdrant]` extra; found through the ``tiered_context.stores``
    entry point, so the core imports no backend).
    """

    JOURNAL = "journal"
    QDRANT = "qdrant"
