"""Adaptive chunk sizing of map_chunks on Dask (pipeline.compute.ChunkSizer): pure logic, no cluster needed."""
from __future__ import annotations

import pytest

from pipeline.compute import SIZER_WINDOW, ChunkSizer, _chunks, adaptive_chunk_size


def test_adaptive_chunk_size_aims_at_the_target_within_bounds():
    assert adaptive_chunk_size(0.02, 0.5, 2, 32) == 25          # 20 ms items, 0.5 s tasks
    assert adaptive_chunk_size(0.001, 0.5, 2, 32) == 32         # cheap items: the cap
    assert adaptive_chunk_size(2.0, 0.5, 2, 32) == 2            # slow items: never below the caller's chunk_size
    assert adaptive_chunk_size(0.0, 0.5, 2, 32) == 32           # no measurable work (all cached)
    assert adaptive_chunk_size(float("nan"), 0.5, 2, 32) == 32


def test_sizer_starts_small_grows_ignores_a_slow_start_and_shrinks_again():
    sizer = ChunkSizer(minimum=2, maximum=32, target_s=0.5)
    assert sizer.size == 2                                      # the first tasks are the caller's size
    assert sizer.observe(2, 3.0) == 2                           # a worker's first task: imports, 1.5 s per item
    for _ in range(2):
        sizer.observe(2, 0.04)                                  # then 20 ms per item
    assert sizer.size == 25                                     # median of the recent chunks, not the slow start
    for _ in range(SIZER_WINDOW):
        sizer.observe(25, 25 * 0.1)                             # items get 5x slower (say, a CNN branch)
    assert sizer.size == 5
    assert sizer.observe(0, 1.0) == 5                           # an empty chunk teaches nothing


def test_sizer_rejects_bad_bounds():
    with pytest.raises(ValueError, match="minimum <= maximum"):
        ChunkSizer(minimum=4, maximum=2, target_s=0.5)
    with pytest.raises(ValueError, match="target seconds"):
        ChunkSizer(minimum=1, maximum=2, target_s=0)


def test_chunks_follow_the_sizer_and_stay_consecutive():
    sizer = ChunkSizer(minimum=1, maximum=8, target_s=0.4)
    got = []
    for start, chunk in _chunks(range(40), sizer):
        got.append((start, chunk))
        sizer.observe(len(chunk), 0.1 * len(chunk))             # 0.1 s per item: 4 items per task
    assert [len(c) for _, c in got[:3]] == [1, 4, 4]
    assert [x for _, c in got for x in c] == list(range(40))
    assert all(start == c[0] for start, c in got)
