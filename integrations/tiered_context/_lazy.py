"""Lazy package exports (PEP 562): a name's module loads on first use.

An adapter package lists ``public name -> defining submodule`` and gets its ``__all__``,
``__getattr__`` and ``__dir__`` from `lazy_exports`, so importing the package needs only
its framework, not every other extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """(``__all__``, ``__getattr__``, ``__dir__``) for `package`; a loaded name is cached in
    `namespace` (the package's globals) so the next access is a plain lookup."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__
