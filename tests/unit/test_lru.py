"""Lru: bounded, forgetting the least recently used entry first."""

from __future__ import annotations

from service.runtime.lru import Lru


def test_the_least_recently_used_entry_goes_first_and_a_read_counts_as_use():
    cache: Lru[str, int] = Lru(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # now "b" is the least recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2


def test_a_rewritten_entry_counts_as_used():
    cache: Lru[str, int] = Lru(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b")) == (10, None)


def test_capacity_zero_keeps_nothing_and_pop_forgets():
    empty: Lru[str, int] = Lru(0)
    empty.put("a", 1)
    assert empty.get("a") is None
    cache: Lru[str, int] = Lru(3)
    cache.put("a", 1)
    cache.pop("a")
    cache.pop("missing")
    assert cache.get("a") is None
    assert len(cache) == 0
