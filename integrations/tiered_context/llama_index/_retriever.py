"""`TieredRetriever`: a LlamaIndex retriever over the three tiers of a `TieredContext`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Dict, List, Optional, Tuple, Union

from tiered_context.errors import ConfigError, missing_extra

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core import AssembledContext, ContextItem, Role, TieredContext
from tiered_context.llama_index._convert import MESSAGE_KEY
from tiered_context.llama_index._instrumentation import emit_assembly

__all__ = ["TieredRetriever"]


def _flat(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return list(value)
    return str(value)


class TieredRetriever(BaseRetriever):
    """Retrieves from every tier of a `TieredContext` (or a `TieredMemory`) with the
    core's assembly: hybrid BM25 + dense candidates, recency, importance and learned
    preference, packed into `token_limit` tokens (`token_budget=` is its deprecated old
    name, kept for one release).

    Setup and use::

        ctx = TieredContext(session_id="kb")
        retriever = TieredRetriever(ctx, token_limit=1500)
        retriever.put_nodes(SentenceSplitter().get_nodes_from_documents(docs))
        engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
        nodes = await retriever.aretrieve("When is the Lisbon launch?")

    Result: `NodeWithScore`s, best first, score = the core's priority value. Each node
    carries provenance in its metadata: ``tier`` (L1 / L2 / L3), ``origin_ids`` (the
    stored originals it stands for), ``compressed`` (a shorter form was used), ``role``
    and the item's own metadata (the source node id as ``source_node_id`` for nodes put
    with `put_nodes`). `retrieve_with_result(query)` returns the nodes and the core's
    `AssembledContext` (report, scores); pass that to `feedback(used, assembled=...)`.
    `last_assembled` is the latest one, for inspection only.
    """

    def __init__(
        self,
        context: Any,
        *,
        token_limit: Optional[int] = None,
        token_budget: Optional[int] = None,
        user_id: Optional[str] = None,
        callback_manager: Optional[CallbackManager] = None,
        verbose: bool = False,
    ) -> None:
        ctx = getattr(context, "context", context)  # a TieredMemory exposes its TieredContext
        if not isinstance(ctx, TieredContext):
            raise ConfigError(f"TieredRetriever needs a TieredContext or TieredMemory, got {type(context).__name__}")
        if token_budget is not None:
            if token_limit is not None:
                raise ConfigError("pass token_limit= only (token_budget= is its deprecated old name)")
            warnings.warn("TieredRetriever(token_budget=...) is deprecated; use token_limit= (token_budget goes in the "
                          "next release)", DeprecationWarning, stacklevel=2)
            token_limit = token_budget
        token_limit = 2000 if token_limit is None else token_limit
        if not isinstance(token_limit, int) or isinstance(token_limit, bool) or token_limit <= 0:
            raise ConfigError(f"token_limit must be a positive int number of tokens, got {token_limit!r}")
        self._source = context
        self.token_limit = token_limit
        self.user_id = user_id
        self.last_assembled: Optional[AssembledContext] = None
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def token_budget(self) -> int:
        """Deprecated: `token_limit`."""
        return self.token_limit

    @property
    def context(self) -> TieredContext:
        """The current `TieredContext` (follows a TieredMemory across reset / set)."""
        return getattr(self._source, "context", self._source)

    # -- writing -------------------------------------------------------------------------
    def _items(self, nodes: Sequence[BaseNode]) -> List[ContextItem]:
        items = []
        for node in nodes:
            meta: Dict[str, Any] = {k: _flat(v) for k, v in node.metadata.items()}
            meta["source_node_id"] = node.node_id
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            if text.strip():
                items.append(ContextItem.create(text, role=Role.DOCUMENT, id=node.node_id, metadata=meta))
        return items

    def put_nodes(self, nodes: Sequence[BaseNode]) -> List[ContextItem]:
        """Store LlamaIndex nodes (documents, chunks) as items; their ids are kept."""
        return self.context.put_many(self._items(nodes))

    async def aput_nodes(self, nodes: Sequence[BaseNode]) -> List[ContextItem]:
        return await self.context.aput_many(self._items(nodes))

    # -- reading -------------------------------------------------------------------------
    def _nodes(self, out: AssembledContext, query: str) -> List[NodeWithScore]:
        self.last_assembled = out
        emit_assembly(out, component="TieredRetriever", session_id=self.context.session_id, query=query, budget=self.token_limit)
        scores = out.report.scores
        result = []
        for item in out.items:
            value = max((scores.get(o, {}).get("value", 0.0) for o in item.origin_ids), default=0.0)
            meta: Dict[str, Any] = {k: _flat(v) for k, v in item.metadata.items() if k != MESSAGE_KEY}
            meta.update({
                "role": item.role,
                "tier": item.tier.value,
                "origin_ids": list(item.origin_ids),
                "compressed": item.is_derived,
                "timestamp": item.timestamp,
            })
            node = TextNode(
                id_=item.id,
                text=item.text,
                metadata=meta,
                excluded_llm_metadata_keys=[k for k in meta if k not in ("role", "speaker", "name")],
                excluded_embed_metadata_keys=list(meta),
            )
            result.append(NodeWithScore(node=node, score=float(value)))
        result.sort(key=lambda n: -(n.score or 0.0))
        return result

    def retrieve_with_result(self, query: Union[str, QueryBundle]) -> Tuple[List[NodeWithScore], AssembledContext]:
        """The nodes and the core's result behind them (for `feedback`, safe under concurrency)."""
        text = query.query_str if isinstance(query, QueryBundle) else str(query)
        out = self.context.assemble(text, budget=self.token_limit, user_id=self.user_id)
        return self._nodes(out, text), out

    async def aretrieve_with_result(self, query: Union[str, QueryBundle]) -> Tuple[List[NodeWithScore], AssembledContext]:
        text = query.query_str if isinstance(query, QueryBundle) else str(query)
        out = await self.context.aassemble(text, budget=self.token_limit, user_id=self.user_id)
        return self._nodes(out, text), out

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return self.retrieve_with_result(query_bundle)[0]

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return (await self.aretrieve_with_result(query_bundle))[0]

    def feedback(self, used: Sequence[Union[str, NodeWithScore]], *, assembled: Optional[AssembledContext] = None) -> None:
        """Which retrieved nodes (ids or NodeWithScore) the answer used: learns preferences.

        `assembled`: the result the answer was built from (`retrieve_with_result`); without
        it, the nodes' own provenance is used: each node carries its origin ids and score
        parts are taken from the latest result only if it produced those nodes."""
        ids = [u.node.node_id if isinstance(u, NodeWithScore) else str(u) for u in used]
        out = assembled
        if out is None:
            latest = self.last_assembled
            if latest is None or not set(ids) <= {i.id for i in latest.items} | {o for i in latest.items for o in i.origin_ids}:
                raise ConfigError("feedback: pass assembled= (from retrieve_with_result) - the latest result of this "
                                  "retriever did not produce these nodes")
            out = latest
        self.context.feedback(out, ids, user_id=self.user_id)
