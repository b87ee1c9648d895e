"""Progress bars for long runs: tqdm when installed (the `[evals]` extra), else none.

The library's own install does not depend on tqdm; the eval's main command still runs on
a plain install, only without a bar.
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    def __init__(self, iterable: Any = None, **_: Any) -> None:
        self._iterable = iterable

    def __iter__(self) -> Any:
        return iter(self._iterable or ())

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """`tqdm(iterable, **kwargs)`, or a silent stand-in when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)
