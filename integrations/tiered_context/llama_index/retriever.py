"""`TieredRetriever`: a LlamaIndex retriever over the three tiers of a `TieredContext`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Dict, List, Optional, Union

from tiered_context.errors import ConfigError, missing_extra

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # pragma: no cover
    raise missing_extra("llama-index-core", "llama-index") from exc

from tiered_context.core.assembler import AssembledContext
from tiered_context.core.items import ContextItem, Role
from tiered_context.core.memory import TieredContext
from tiered_context.llama_index._convert import MESSAGE_KEY
from tiered_context.llama_index.instrumentation import emit_assembly

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
    preference, packed into `token_budget` tokens.

    Setup and use::

        ctx = TieredContext(session_id="kb")
        retriever = TieredRetriever(ctx, token_budget=1500)
        retriever.put_nodes(SentenceSplitter().get_nodes_from_documents(docs))
        engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
        nodes = await retriever.aretrieve("When is the Lisbon launch?")

    Result: `NodeWithScore`s, best first, score = the core's priority value. Each node
    carries provenance in its metadata: ``tier`` (L1 / L2 / L3), ``origin_ids`` (the
    stored originals it stands for), ``compressed`` (a shorter form was used), ``role``
    and the item's own metadata (the source node id as ``source_node_id`` for nodes put
    with `put_nodes`). `last_assembled` is the core's full result (report, scores).
    """

    def __init__(
        self,
        context: Any,
        *,
        token_budget: int = 2000,
        user_id: Optional[str] = None,
        callback_manager: Optional[CallbackManager] = None,
        verbose: bool = False,
    ) -> None:
        ctx = getattr(context, "context", context)  # a TieredMemory exposes its TieredContext
        if not isinstance(ctx, TieredContext):
            raise ConfigError(f"TieredRetriever needs a TieredContext or TieredMemory, got {type(context).__name__}")
        if token_budget <= 0:
            raise ConfigError("token_budget must be a positive number of tokens")
        self._source = context
        self.token_budget = token_budget
        self.user_id = user_id
        self.last_assembled: Optional[AssembledContext] = None
        super().__init__(callback_manager=callback_manager, verbose=verbose)

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
        emit_assembly(out, component="TieredRetriever", session_id=self.context.session_id, query=query, budget=self.token_budget)
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

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        query = query_bundle.query_str
        out = self.context.assemble(query, budget=self.token_budget, user_id=self.user_id)
        return self._nodes(out, query)

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        query = query_bundle.query_str
        out = await self.context.aassemble(query, budget=self.token_budget, user_id=self.user_id)
        return self._nodes(out, query)

    def feedback(self, used: Sequence[Union[str, NodeWithScore]]) -> None:
        """Which retrieved nodes (ids or NodeWithScore) the answer used: learns preferences."""
        if self.last_assembled is None:
            return
        ids = [u.node.node_id if isinstance(u, NodeWithScore) else str(u) for u in used]
        self.context.feedback(self.last_assembled, ids, user_id=self.user_id)
