"""The prefix cache's radix tree on synthetic KV tensors (no model): what is stored,
matched, split and evicted, and that nothing a caller does to a looked-up cache
reaches the store."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from safescale.models.prefix_cache import PrefixCache, cacheable

LAYERS, HEADS, DIM = 2, 2, 4
#: bytes of one token position (keys + values, every layer), float32
TOKEN_BYTES = 2 * LAYERS * HEADS * DIM * 4


def _kv(ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer keys/values where position p depends on ids[: p + 1] only (as under a
    causal mask): two sequences agree exactly on their common prefix."""
    prefix_sums = torch.cumsum(torch.tensor(ids, dtype=torch.float32), 0)
    out = []
    for layer in range(LAYERS):
        base = prefix_sums[None, None, :, None] + 1000 * layer
        keys = base + torch.arange(HEADS)[None, :, None, None] + 0.01 * torch.arange(DIM)
        out.append((keys.clone(), -keys.clone()))
    return out


def _cache(ids: list[int]) -> DynamicCache:
    cache = DynamicCache()
    for layer, (k, v) in enumerate(_kv(ids)):
        cache.update(k, v, layer)
    return cache


def _assert_matches(cache: DynamicCache, ids: list[int], n: int) -> None:
    expected = _kv(ids)
    assert cache.get_seq_length() == n
    for layer, (k, v) in zip(cache.layers, expected, strict=True):
        assert torch.equal(layer.keys, k[..., :n, :])
        assert torch.equal(layer.values, v[..., :n, :])


def test_a_stored_prefix_is_read_back_exactly_and_only_as_far_as_it_matches():
    store = PrefixCache(10**6)
    a = [5, 6, 7, 8, 9, 10]
    assert store.lookup(a) == (0, None)
    assert store.insert(a, _cache(a)) == len(a)
    b = [5, 6, 7, 1, 2]  # shares three tokens with a
    n, cache = store.lookup(b)
    assert n == 3
    _assert_matches(cache, b, 3)
    n, cache = store.lookup(a, limit=len(a) - 1)  # the last position left to compute
    assert n == 5
    _assert_matches(cache, a, 5)
    assert store.peek([1, 2, 3]) == 0 and store.peek(a) == 6


def test_prompts_sharing_a_prefix_store_it_once():
    store = PrefixCache(10**6)
    a, b, c = [1, 2, 3, 4, 5], [1, 2, 3, 9, 9, 9], [1, 2, 7]
    for ids in (a, b, c):
        store.insert(ids, _cache(ids))
    # the radix tree holds each distinct position once: 1 2 | 3 | 4 5 / 9 9 9 / 7
    assert store.stored_tokens == 2 + 1 + 2 + 3 + 1
    assert store.stats.stored_bytes == store.stored_tokens * TOKEN_BYTES
    for ids in (a, b, c):  # every one is still read back exactly after the splits
        n, cache = store.lookup(ids)
        assert n == len(ids)
        _assert_matches(cache, ids, n)


def test_extending_a_looked_up_cache_never_changes_the_store():
    store = PrefixCache(10**6)
    a = [3, 1, 4, 1, 5]
    store.insert(a, _cache(a))
    _, cache = store.lookup(a)
    for layer in range(LAYERS):  # what a forward does with it: grow by concatenation
        cache.update(torch.ones(1, HEADS, 2, DIM), torch.ones(1, HEADS, 2, DIM), layer)
    cache.batch_repeat_interleave(3)
    n, again = store.lookup(a)
    assert n == 5
    _assert_matches(again, a, 5)


def test_least_recently_used_tails_are_evicted_first_and_the_bound_holds():
    shared = list(range(100, 110))
    tails = [[1, 2], [3, 4], [5, 6], [7, 8]]
    bound = (len(shared) + 2 * 3) * TOKEN_BYTES  # room for the prefix and three tails
    store = PrefixCache(bound)
    for tail in tails[:3]:
        store.insert(shared + tail, _cache(shared + tail))
    store.lookup(shared + tails[0])  # the first tail is used again: the second is oldest
    store.insert(shared + tails[3], _cache(shared + tails[3]))
    assert store.stats.stored_bytes <= bound
    assert store.stats.evictions == 1
    assert store.peek(shared + tails[1]) == len(shared)  # its tail went, the prefix stayed
    for tail in (tails[0], tails[2], tails[3]):
        assert store.peek(shared + tail) == len(shared) + 2


def test_a_prefix_larger_than_the_bound_is_not_stored():
    store = PrefixCache(4 * TOKEN_BYTES)
    ids = list(range(10))
    assert store.insert(ids, _cache(ids)) == 0
    assert store.stats.stored_bytes == 0 and store.lookup(ids) == (0, None)


def test_a_sliding_window_cache_is_refused_and_turns_the_cache_off():
    layer = DynamicSlidingWindowLayer(sliding_window=4)
    cache = DynamicCache()
    cache.layers = [layer]
    cache.layer_class_to_replicate = None
    k, v = _kv([1, 2, 3, 4, 5, 6])[0]
    cache.update(k, v, 0)
    assert not cacheable(cache)
    assert cacheable(_cache([1, 2, 3]))
    store = PrefixCache(10**6)
    assert store.insert([1, 2, 3, 4, 5, 6], cache) == 0
    assert not store.supported and store.stats.stored_bytes == 0
    assert type(_cache([1]).layers[0]) is DynamicLayer


def test_megabytes_zero_means_no_cache_and_negative_is_refused():
    assert PrefixCache.from_megabytes(0) is None
    assert PrefixCache.from_megabytes(1.5).max_bytes == int(1.5 * 2**20)
    with pytest.raises(ValueError, match="prefix_cache_mb"):
        PrefixCache.from_megabytes(-1)


def test_a_cache_shorter_than_the_ids_is_an_error():
    store = PrefixCache(10**6)
    with pytest.raises(ValueError, match="fewer than"):
        store.insert([1, 2, 3, 4], _cache([1, 2]))
