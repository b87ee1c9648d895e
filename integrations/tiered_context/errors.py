"""The one error hierarchy of tiered-context.

```
TieredContextError                 base: catch this to catch everything we raise
├── ConfigError (ValueError)       a setting is invalid or settings contradict each other
│   └── BudgetError                the budget cannot hold what must be in it (e.g. pinned items)
├── InputError (ValueError)        an item or message we cannot accept as given
│   └── DuplicateItemError         an id that is already stored with different content
├── DependencyError (ImportError)  an optional extra is not installed
├── StoreError (RuntimeError)      the cold store failed; nothing acknowledged was lost
└── ScopeError                     a scope operation cannot be done as asked
    ├── MergeConflict              a diff touches keys the parent changed since the fork
    └── TenantError (PermissionError)  one tenant's scope, diff or block used from another's
```
Every message says what to change.
"""

from __future__ import annotations

__all__ = [
    "TieredContextError",
    "ConfigError",
    "BudgetError",
    "InputError",
    "DuplicateItemError",
    "DependencyError",
    "StoreError",
    "ScopeError",
    "MergeConflict",
    "TenantError",
]


class TieredContextError(Exception):
    """Base class of every error tiered-context raises."""


class ConfigError(TieredContextError, ValueError):
    """A setting is invalid, or two settings contradict each other."""


class BudgetError(ConfigError):
    """The budget cannot hold what must be in it (pinned items, the system prompt)."""


class InputError(TieredContextError, ValueError):
    """An item or a message cannot be accepted as given."""


class DuplicateItemError(InputError):
    """An item id is already stored with different content."""


class DependencyError(TieredContextError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class StoreError(TieredContextError, RuntimeError):
    """The cold store failed. Acknowledged items are never lost by this error."""


class ScopeError(TieredContextError):
    """A scope operation cannot be done as asked (unknown scope, a diff for another parent)."""


class MergeConflict(ScopeError):
    """A diff touches keys that the parent changed after the child forked.

    `keys` lists them; merge again with ``on_conflict="ours"`` (keep the parent's) or
    ``"theirs"`` (take the diff's), or re-fork the child from the parent's current version.
    """

    def __init__(self, keys: list[str], *, scope: str, base_version: int, parent_version: int) -> None:
        self.keys, self.scope = sorted(keys), scope
        self.base_version, self.parent_version = base_version, parent_version
        super().__init__(
            f"diff of scope {scope!r} (based on parent version {base_version}, parent now at {parent_version}) "
            f"conflicts on {len(self.keys)} key(s): {', '.join(self.keys[:10])}; merge with on_conflict='ours' "
            "(keep the parent's blocks) or 'theirs' (take the child's), or fork again from the current parent"
        )


class TenantError(ScopeError, PermissionError):
    """A scope, diff or block of one tenant was used from another tenant's scope."""


def positive_int(name: str, value: object) -> int:
    """`value` if it is a positive int (not a bool), else `ConfigError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def missing_extra(package: str, extra: str) -> DependencyError:
    """The error to raise when `package` is needed: names the extra that installs it."""
    return DependencyError(
        f"{package} is not installed. Install it with: pip install \"tiered-context[{extra}]\""
    )
