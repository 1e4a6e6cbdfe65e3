"""A cross-call prefix cache: the KV states of prompt prefixes, kept by token prefix.

Prompts of a study share long leading runs of tokens: the chat template and system
turn of every prompt, the evidence block of every item that shares an evidence set,
the whole packed corpus of max-context under ``max_context.order: corpus``, the
question of the critic's per-passage prompts. :class:`PrefixCache` keeps the keys and
values a prefill computed, in a radix tree over token ids (SGLang's RadixAttention
layout), so the next prompt that starts with the same ids reads them instead of
computing them: only its own suffix is prefilled.

* **Exact up to float rounding.** Under the causal mask the keys and values of
  position ``i`` depend only on tokens ``<= i``, so a prefix computed as part of
  another prompt is the prefix of this one. What differs is summation order (a
  prompt prefilled in two chunks instead of one); the tolerance is stated and tested
  in ``tests/integration/test_prefix_cache_tiny.py``.
* **Bounded.** Stored tensors are counted in bytes; past ``max_bytes`` the least
  recently used leaves go first (a prompt's own tail is used once, a shared prefix by
  every prompt that starts with it, so tails go first). A single prefix larger than
  the bound is not stored.
* **Only full-attention caches.** A layer must be a plain
  :class:`transformers.cache_utils.DynamicLayer` (its keys hold every position):
  sliding-window layers keep only the last ``window`` positions, quantized or static
  layers keep other shapes, so a prefix cannot be cut out of them. A model whose
  cache has such layers is served cold (:attr:`PrefixCache.supported` turns False at
  the first prefill that shows them, and the backend stops asking).
* **Nothing is changed in place.** A lookup returns a fresh
  :class:`~transformers.DynamicCache` whose tensors are views of (or one concatenation
  of) the stored ones; transformers' dynamic layers grow by concatenation, so a forward
  over it never writes into the store, and a stored segment is a copy, never a view of
  a caller's cache.

The backend hook is :meth:`safescale.models.LanguageModel.prefill`; every entry point
that prefills a prompt goes through it when the model has a prefix cache.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["PrefixCache", "PrefixCacheStats", "cacheable", "sliding_window"]


def sliding_window(lm) -> int | None:
    """The model's sliding attention window (tokens), or None for full attention."""
    cfg = lm.model.config.get_text_config()
    window = getattr(cfg, "sliding_window", None)
    return int(window) if window else None


def cacheable(cache: Any) -> bool:
    """Whether every layer of ``cache`` is a plain dynamic (full-attention) layer holding
    keys for every position, i.e. a prefix can be cut out of it."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers:
        return False
    return all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


def _empty_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A :class:`~transformers.DynamicCache` holding these per-layer keys and values
    (the tensors themselves, not copies)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache()
    built = []
    for keys, values in layers:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        built.append(layer)
    cache.layers = built
    cache.layer_class_to_replicate = None
    return cache


@dataclass(eq=False)
class _Node:
    """A radix-tree edge: ``tokens`` and their keys/values (one tensor per layer,
    ``[1, heads, len(tokens), head_dim]``)."""

    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def split(self, at: int) -> _Node:
        """Cut this edge after ``at`` tokens: this node keeps the head, a new child (the
        one returned) the tail; both are copies, so neither keeps the other's storage
        alive."""
        tail = _Node(
            tokens=self.tokens[at:],
            keys=[k[..., at:, :].clone() for k in self.keys],
            values=[v[..., at:, :].clone() for v in self.values],
            parent=self,
            children=self.children,
            last_used=self.last_used,
        )
        for child in tail.children.values():
            child.parent = tail
        self.tokens = self.tokens[:at]
        self.keys = [k[..., :at, :].clone() for k in self.keys]
        self.values = [v[..., :at, :].clone() for v in self.values]
        self.children = {tail.tokens[0]: tail}
        return tail


@dataclass
class PrefixCacheStats:
    """What a prefix cache did.

    Attributes:
        lookups: prefills that asked it.
        hits: lookups that reused at least one token.
        reused_tokens: prompt tokens read from it instead of computed.
        computed_tokens: prompt tokens the prefills computed (cache misses).
        shared_tokens: prompt tokens of packed calls (several prompts over their common
            prefix in one forward) that the prefix's single prefill stood in for.
        stored_bytes: bytes held now.
        evictions: segments evicted to stay within the bound.
        cold: prefills served cold because the model's cache cannot be cut.
    """

    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    shared_tokens: int = 0
    stored_bytes: int = 0
    evictions: int = 0
    cold: int = 0

    @property
    def reuse_fraction(self) -> float:
        """Share of prompt tokens not computed: read from the cache, or shared with
        another prompt of a packed call (0 when none)."""
        saved = self.reused_tokens + self.shared_tokens
        total = saved + self.computed_tokens
        return saved / total if total else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "reused_tokens": self.reused_tokens,
            "computed_tokens": self.computed_tokens,
            "shared_tokens": self.shared_tokens,
            "reuse_fraction": round(self.reuse_fraction, 4),
            "stored_mb": round(self.stored_bytes / 2**20, 1),
            "evictions": self.evictions,
            "cold": self.cold,
        }


class PrefixCache:
    """KV states of token prefixes in a radix tree, least recently used evicted first.

    Args:
        max_bytes: bound on the stored tensors (> 0).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("a prefix cache needs max_bytes > 0 (0 means no cache)")
        self.max_bytes = int(max_bytes)
        self.supported = True
        self.stats = PrefixCacheStats()
        self._root = _Node(tokens=(), keys=[], values=[], parent=None)
        self._clock = 0
        self._lock = threading.RLock()

    @classmethod
    def from_megabytes(cls, megabytes: float) -> PrefixCache | None:
        """A cache bounded at ``megabytes`` MiB, or None for ``0`` (no cache)."""
        if megabytes < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {megabytes}")
        return cls(int(megabytes * 2**20)) if megabytes > 0 else None

    # ------------------------------------------------------------------ reading
    def _walk(self, ids: Sequence[int], limit: int) -> list[tuple[_Node, int]]:
        """The nodes matching ``ids[:limit]`` from the root, each with how many of its
        tokens match (only the last may match partly)."""
        path: list[tuple[_Node, int]] = []
        node, pos = self._root, 0
        while pos < limit:
            child = node.children.get(int(ids[pos]))
            if child is None:
                break
            k = 0
            edge = child.tokens
            while k < len(edge) and pos + k < limit and edge[k] == ids[pos + k]:
                k += 1
            path.append((child, k))
            pos += k
            if k < len(edge):
                break
            node = child
        return path

    def peek(self, ids: Sequence[int], limit: int | None = None) -> int:
        """How many leading tokens of ``ids[:limit]`` are stored (nothing is touched)."""
        with self._lock:
            limit = len(ids) if limit is None else min(limit, len(ids))
            return sum(k for _, k in self._walk(ids, limit))

    def lookup(self, ids: Sequence[int], limit: int | None = None) -> tuple[int, Any]:
        """The longest stored prefix of ``ids[:limit]``.

        Returns:
            ``(n, cache)``: ``n`` tokens reused and a fresh
            :class:`~transformers.DynamicCache` over positions ``[0, n)`` (None when
            ``n == 0``). The cache's tensors are views of the stored ones (a single
            segment) or their concatenation; extending it never changes the store.
        """
        with self._lock:
            self.stats.lookups += 1
            limit = len(ids) if limit is None else min(limit, len(ids))
            path = self._walk(ids, limit)
            n = sum(k for _, k in path)
            if n == 0:
                return 0, None
            self._clock += 1
            for node, _ in path:
                node.last_used = self._clock
            n_layers = len(path[0][0].keys)
            layers = []
            for layer in range(n_layers):
                keys = [node.keys[layer][..., :k, :] for node, k in path]
                values = [node.values[layer][..., :k, :] for node, k in path]
                if len(keys) > 1:
                    layers.append((torch.cat(keys, dim=-2), torch.cat(values, dim=-2)))
                else:
                    layers.append((keys[0], values[0]))
            self.stats.hits += 1
            self.stats.reused_tokens += n
            return n, _empty_cache(layers)

    # ------------------------------------------------------------------ writing
    def insert(self, ids: Sequence[int], cache: Any, *, row: int = 0) -> int:
        """Store the keys/values of ``ids`` from ``cache`` (whose first ``len(ids)``
        positions of batch row ``row`` hold them); only the part not stored yet is
        copied. A cache that cannot be cut (:func:`cacheable`) marks this prefix cache
        unsupported and stores nothing.

        Returns:
            The number of tokens newly stored.
        """
        ids = [int(t) for t in ids]
        if not ids:
            return 0
        if not cacheable(cache):
            self.supported = False
            return 0
        if cache.get_seq_length() < len(ids):
            raise ValueError(
                f"the cache holds {cache.get_seq_length()} positions, fewer than the "
                f"{len(ids)} ids to store"
            )
        with self._lock:
            self._clock += 1
            path = self._walk(ids, len(ids))
            pos = sum(k for _, k in path)
            if pos == len(ids):
                return 0
            parent = self._root
            if path:
                last, k = path[-1]
                if k < len(last.tokens):  # the match ends inside an edge: cut it there
                    before = last.nbytes
                    tail = last.split(k)  # the tail keeps its own last use
                    self.stats.stored_bytes += last.nbytes + tail.nbytes - before
                parent = last
            for node, _ in path:
                node.last_used = self._clock
            keys = [
                layer.keys[row : row + 1, :, pos : len(ids), :].clone() for layer in cache.layers
            ]
            values = [
                layer.values[row : row + 1, :, pos : len(ids), :].clone() for layer in cache.layers
            ]
            leaf = _Node(
                tokens=tuple(ids[pos:]),
                keys=keys,
                values=values,
                parent=parent,
                last_used=self._clock,
            )
            if leaf.nbytes > self.max_bytes:
                return 0
            parent.children[leaf.tokens[0]] = leaf
            self.stats.stored_bytes += leaf.nbytes
            self._evict(keep=leaf)
            return len(ids) - pos

    def _evict(self, keep: _Node) -> None:
        """Drop least recently used leaves until the store fits its bound (``keep``,
        the segment just stored, goes last)."""
        while self.stats.stored_bytes > self.max_bytes:
            leaves = [n for n in self._nodes() if not n.children and n is not keep]
            if not leaves:
                break
            victim = min(leaves, key=lambda n: n.last_used)
            self._remove(victim)

    def _remove(self, node: _Node) -> None:
        assert node.parent is not None
        del node.parent.children[node.tokens[0]]
        self.stats.stored_bytes -= node.nbytes
        self.stats.evictions += 1

    def _nodes(self) -> list[_Node]:
        out, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    # ------------------------------------------------------------------ bookkeeping
    def note_computed(self, n_tokens: int) -> None:
        """Count prompt tokens a prefill computed (for :attr:`stats`)."""
        self.stats.computed_tokens += int(n_tokens)

    def note_shared(self, n_tokens: int) -> None:
        """Count prompt tokens a packed call's common prefix stood in for."""
        self.stats.shared_tokens += int(n_tokens)

    def note_cold(self) -> None:
        """Count a prefill served cold because the model's cache cannot be cut."""
        self.stats.cold += 1

    @property
    def stored_tokens(self) -> int:
        """Token positions held (over every segment)."""
        with self._lock:
            return sum(len(n.tokens) for n in self._nodes())

    def clear(self) -> None:
        """Drop every stored segment (statistics are kept)."""
        with self._lock:
            self._root.children = {}
            self.stats.stored_bytes = 0
