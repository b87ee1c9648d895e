"""Learned preferences of a `TieredContext`: the online feedback step, and each user's
weights archived as records of their own.

`apply_feedback` is one preference step (the `Scorer`'s `PreferenceModel`). The
`Preferences` mixin gives the facade its per-user archive: every `feedback` appends a
numbered record of the weights (``pref-<number>-<digest>``) under the user's
`Kind.PREFERENCES` namespace (per session for an anonymous memory); a memory loads a
user's latest record the first time it serves that user, and weights an older release
kept in ``<path>/preferences.json`` are the starting point for users with none archived.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from tiered_context.core._durable import read_json
from tiered_context.core._embed import normalize
from tiered_context.core._items import ContextItem, Tier
from tiered_context.core._namespace import Kind, Namespace
from tiered_context.core._result import AssembledContext
from tiered_context.core._scoring import Scorer, ScoreParts

__all__ = ["LEGACY_PREFERENCES", "Preferences", "apply_feedback"]

log = logging.getLogger("tiered_context")
#: The side file where releases before namespaces kept learned weights (read once, migrated).
LEGACY_PREFERENCES = "preferences.json"
_PREFERENCES_TEXT = "learned priority weights"


def apply_feedback(scorer: Scorer, assembled: AssembledContext, used: Iterable[str], user: str | None) -> None:
    """One online preference step for `user`: the items of `assembled` named in `used`
    (ids or origin ids) pull the weights toward their score parts, the others push away."""
    used_ids = set(used)
    used_parts, unused_parts = [], []
    for item in assembled.items:
        origin = item.origin_ids[0]
        parts = assembled.report.scores.get(origin)
        if parts is None:
            continue
        sp = ScoreParts(*(parts[k] for k in ScoreParts.__slots__))
        (used_parts if {item.id, origin} & used_ids else unused_parts).append(sp)
    scorer.preferences.update(user, used_parts, unused_parts)


class Preferences:
    """The per-user learned weights of `TieredContext` (a mixin of the facade: it reads
    the facade's `scorer`, `store`, `embedder`, `path` and current `_namespace`)."""

    def _init_preferences(self) -> None:
        self._preference_numbers: dict[str | None, int] = {}  # user -> number of the latest archived weights
        self._pref_vector: Any = None

    def _archive_preferences(self, user: str | None) -> None:
        """Archive `user`'s weights as the next numbered record (called under the facade's lock)."""
        weights = self.scorer.preferences.state().get(user or "")
        if weights is None:
            return
        number = self._preference_numbers[user] + 1
        digest = hashlib.blake2b(json.dumps(weights).encode(), digest_size=6).hexdigest()
        record = ContextItem(id=f"pref-{number:010d}-{digest}", text=_PREFERENCES_TEXT, role="preferences",
                             tier=Tier.L3, metadata={"number": number, "weights": weights})
        self.store.add(self._preferences_key(user), [record], self._preferences_vector())
        self._preference_numbers[user] = number

    def _preferences_key(self, user: str | None) -> str:
        ns = self._namespace
        # a named user's weights follow the user across sessions; an anonymous memory's stay in its session
        scope = Namespace(session=ns.session if user is None else "*", user=user, tenant=ns.tenant)
        return scope.with_kind(Kind.PREFERENCES).key

    def _preferences_vector(self) -> Any:
        """The vector archived with every preference record: one embedding of their fixed text."""
        if self._pref_vector is None:
            self._pref_vector = normalize(self.embedder.embed([_PREFERENCES_TEXT]))
        return self._pref_vector

    def _load_preferences(self, user: str | None) -> None:
        if user in self._preference_numbers:
            return
        records = [r for r in self.store.items(self._preferences_key(user))
                   if r.role == "preferences" and isinstance(r.metadata.get("weights"), list)]
        latest = max(records, key=lambda r: (int(r.metadata.get("number", 0)), r.id), default=None)
        if latest is not None:
            try:
                self.scorer.preferences.load({user or "": latest.metadata["weights"]}, merge=True)
            except (TypeError, ValueError) as exc:
                log.warning("learned weights of %r unreadable (%s); defaults used", user, exc)
        self._preference_numbers[user] = 0 if latest is None else int(latest.metadata.get("number", 0))

    def _migrate_legacy_preferences(self) -> None:
        """Weights a release before namespaces kept in ``<path>/preferences.json``: used as
        the starting point for users with no archived weights (a damaged file is moved aside)."""
        if self.path is None:
            return
        state = read_json(self.path / LEGACY_PREFERENCES, what="learned preferences file")
        if not state:
            return
        try:
            legacy = {str(u): [float(x) for x in w] for u, w in state.items()}
        except (TypeError, ValueError):
            log.warning("%s holds no weights this release can read; ignored", self.path / LEGACY_PREFERENCES)
            return
        self.scorer.preferences.load(legacy, merge=True)
