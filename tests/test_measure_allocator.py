"""The allocator models of `kvplan measure` (kvplan/measure/allocator.py).

CUDA: golden cases worked by hand from the caching allocator's rules (512 B blocks;
small pool up to 1 MiB in 2 MiB segments; 20 MiB segments for 1-10 MiB; larger
requests rounded up to 2 MiB; best fit; split only if the rest is >= 512 B in the
small pool or > 1 MiB in the large pool), plus invariants.
CPU: glibc's mmapped chunk sizes as this machine's glibc reported them (mallinfo2
hblkhd), and a live check of the rule against the running glibc.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvplan.measure.allocator import (
    cuda_allocations,
    cuda_round_size,
    cuda_segment_size,
    free_blocks,
    glibc_allocations,
    glibc_mmap_bytes,
)

KiB, MiB = 2**10, 2**20


@pytest.mark.parametrize(
    "nbytes, block, segment",
    [
        (1, 512, 2 * MiB),
        (512, 512, 2 * MiB),
        (513, 1024, 2 * MiB),
        (MiB, MiB, 2 * MiB),  # the largest small-pool request
        (MiB + 1, MiB + 512, 20 * MiB),
        (10 * MiB - 1, 10 * MiB, 10 * MiB),  # rounds to exactly kMinLargeAlloc: its own segment
        (10 * MiB - 513, 10 * MiB - 512, 20 * MiB),
        (11 * MiB + 512 * KiB, 11 * MiB + 512 * KiB, 12 * MiB),
    ],
)
def test_cuda_block_and_segment_sizes(nbytes, block, segment):
    assert cuda_round_size(nbytes) == block
    assert cuda_segment_size(block) == segment


@pytest.mark.parametrize(
    "sizes, free, allocated, reserved, segments",
    [
        # a 100 B tensor: one 512 B block of a fresh 2 MiB small segment
        ([100], [], 512, 2 * MiB, 1),
        # 4 x 525,312 B (a 2-layer cache of 4,104 tokens x 4 sequences, bf16): three fit one 2 MiB
        # segment (2,097,152 - 3 x 525,312 = 521,216 B left), the fourth opens a second
        ([525_312] * 4, [], 4 * 525_312, 4 * MiB, 2),
        # 5 x 4 MiB: one 20 MiB segment, split four times; the fifth takes the exact rest
        ([4 * MiB] * 5, [], 20 * MiB, 20 * MiB, 1),
        # 9.5 MiB twice: the second finds the 10.5 MiB rest; 1 MiB left is not > 1 MiB, so no split
        ([9 * MiB + 512 * KiB] * 2, [], 20 * MiB, 20 * MiB, 1),
        # 11.5 MiB: a 12 MiB segment; the 0.5 MiB rest is not split off, so allocated counts 12 MiB
        ([11 * MiB + 512 * KiB], [], 12 * MiB, 12 * MiB, 1),
        # 10.5 MiB leaves a 1.5 MiB free block; 1.25 MiB takes it whole (0.25 MiB rest is not split)
        ([10 * MiB + 512 * KiB, MiB + 256 * KiB], [], 12 * MiB, 12 * MiB, 1),
        # two 1 MiB small-pool blocks share one 2 MiB segment
        ([MiB, MiB], [], 2 * MiB, 2 * MiB, 1),
        # a free 3 MiB large block serves 2.5 MiB whole: nothing new reserved
        ([2 * MiB + 512 * KiB], [(3 * MiB, False)], 3 * MiB, 0, 0),
        # a free 600 KiB small block serves 500 KiB and keeps 100 KiB free
        ([500 * KiB, 100 * KiB], [(600 * KiB, True)], 600 * KiB, 0, 0),
        # best fit: of 30 MiB and 5 MiB free, 4.5 MiB takes the 5 MiB block whole (0.5 MiB rest)
        ([4 * MiB + 512 * KiB], [(30 * MiB, False), (5 * MiB, False)], 5 * MiB, 0, 0),
        # a small request never takes a large-pool block
        ([KiB], [(30 * MiB, False)], KiB, 2 * MiB, 1),
    ],
)
def test_cuda_allocations_golden(sizes, free, allocated, reserved, segments):
    delta = cuda_allocations(sizes, free)
    assert (delta.requested_bytes, delta.allocated_bytes, delta.reserved_bytes, delta.segments) == (
        sum(sizes), allocated, reserved, segments,
    )
    assert delta.rounding_bytes == allocated - sum(sizes)


sizes_strategy = st.lists(st.integers(min_value=1, max_value=64 * MiB), min_size=1, max_size=40)


@given(sizes_strategy)
def test_cuda_allocations_invariants(sizes):
    delta = cuda_allocations(sizes)
    assert delta.allocated_bytes % 512 == 0 and delta.reserved_bytes % (2 * MiB) == 0
    # every tensor gets at least its rounded block; a block keeps at most 1 MiB beyond it
    assert sum(cuda_round_size(n) for n in sizes) <= delta.allocated_bytes <= sum(cuda_round_size(n) + MiB for n in sizes)
    # from an empty pool, everything allocated lies in new segments, at most one per tensor
    assert delta.allocated_bytes <= delta.reserved_bytes and 1 <= delta.segments <= len(sizes)


@given(sizes_strategy)
def test_blocks_that_fit_exactly_reserve_nothing(sizes):
    # a free block of exactly each rounded size, in its pool: every tensor takes one whole, no segment opens
    free = [(cuda_round_size(n), cuda_round_size(n) <= MiB) for n in sizes]
    delta = cuda_allocations(sizes, free)
    assert (delta.reserved_bytes, delta.segments) == (0, 0)
    assert delta.allocated_bytes == sum(cuda_round_size(n) for n in sizes)


# mallinfo2 hblkhd deltas read on Debian glibc 2.36 (x86_64) for torch.zeros(n, dtype=uint8) with the
# mmap threshold pinned at 128 KiB: the mapping is the chunk of n + 64 + 32 B, + 8, rounded to 4 KiB
@pytest.mark.parametrize(
    "nbytes, mapped",
    [
        (131_000, 135_168),
        (140_000, 143_360),
        (MiB, MiB + 4096),
        (MiB + 1, MiB + 4096),
        (409_592, 413_696),  # 100 pages - 8 B: the slack crosses a page
        (409_464, 409_600),  # 100 pages - 136 B: the largest that still fits 100 pages
        (409_463, 409_600),
        (409_480, 413_696),
        (12_345_678, 12_349_440),
    ],
)
def test_glibc_mmap_golden(nbytes, mapped):
    assert glibc_mmap_bytes(nbytes) == mapped


def test_glibc_heap_or_mmap():
    delta = glibc_allocations([1000, 200 * KiB, 200 * KiB], mmap_threshold=128 * KiB, heap_top=300 * KiB)
    # 1,000 B: under the threshold, a heap chunk of 1,008 B (n + 8 in 16 B steps); its 1,120 B request
    # leaves 306,080 B of top. The first 200 KiB asks 204,928 B (its 204,816 B chunk + 64 + 32, padded):
    # the top keeps 32 B spare after it, so it is a heap chunk (101,152 B of top left); the second no
    # longer fits: mmapped, 204,928 + 8 rounded up to 4 KiB = 200 KiB + 4 KiB
    assert (delta.segments, delta.reserved_bytes) == (1, 200 * KiB + 4096)
    assert delta.allocated_bytes == 1008 + (200 * KiB + 16) + (200 * KiB + 4096)


def test_glibc_rule_holds_on_this_machine():
    """The running glibc maps exactly what the model says for every tensor it mmaps, and the model's
    heap-or-mmap call (from the top chunk) agrees for tensors of a MiB and more in a quiet heap."""
    torch = pytest.importorskip("torch")
    from kvplan.measure.readings import MMAP_THRESHOLD_BYTES, GlibcMalloc

    try:
        malloc = GlibcMalloc()
    except OSError as exc:
        pytest.skip(f"not glibc: {exc}")
    assert malloc.pin_mmap_threshold()
    keep, agreed = [], 0
    sizes = [1000, 409_464, 409_465, MiB, 3 * MiB + 7, 5_000_000, 16 * MiB + 1]
    for nbytes in sizes:
        top = malloc.heap_top_bytes()
        mapped = malloc.libc.mallinfo2().hblkhd
        keep.append(torch.zeros(nbytes, dtype=torch.uint8))
        grown = malloc.libc.mallinfo2().hblkhd - mapped
        if grown:  # mmapped: the size is the rule's, to the byte
            assert grown == glibc_mmap_bytes(nbytes), nbytes
        agreed += grown == glibc_allocations([nbytes], MMAP_THRESHOLD_BYTES, top).reserved_bytes
    assert grown == glibc_mmap_bytes(16 * MiB + 1)  # far above any top chunk: always its own mapping
    # the heap-or-mmap call reads only the top chunk (free lists and other arenas are not modelled)
    assert agreed >= len(sizes) - 2



def test_free_blocks_from_a_snapshot():
    """Only inactive blocks of this device's default pool on this stream can serve a new tensor."""
    def segment(device=0, stream=0, kind="large", pool=(0, 0), blocks=()):
        return {"device": device, "stream": stream, "segment_type": kind, "segment_pool_id": pool,
                "blocks": [{"size": size, "state": state} for size, state in blocks]}

    snapshot = [
        segment(blocks=[(4 * MiB, "active_allocated"), (16 * MiB, "inactive")]),
        segment(kind="small", blocks=[(512, "active_allocated"), (2 * MiB - 512, "inactive")]),
        segment(device=1, blocks=[(20 * MiB, "inactive")]),  # another GPU
        segment(stream=7, blocks=[(20 * MiB, "inactive")]),  # another stream
        segment(pool=(1, 0), blocks=[(20 * MiB, "inactive")]),  # a CUDA graph's private pool
        segment(blocks=[(6 * MiB, "active_awaiting_free"), (14 * MiB, "inactive")]),
    ]
    assert free_blocks(snapshot, 0, 0) == [(16 * MiB, False), (2 * MiB - 512, True), (14 * MiB, False)]
    # a 12 MiB cache tensor then takes the 14 MiB block (best fit) and splits it: nothing new reserved
    delta = cuda_allocations([12 * MiB], free_blocks(snapshot, 0, 0))
    assert (delta.allocated_bytes, delta.reserved_bytes) == (12 * MiB, 0)


def test_glibc_top_chunk_boundary():
    # 200 KiB asks _int_malloc for 204,928 B (its 204,816 B chunk + 64 + 32, padded); glibc serves it from the
    # top chunk only if MINSIZE (32 B) stays spare: a top of exactly 204,960 B does, 204,959 B does not
    at = glibc_allocations([200 * KiB], mmap_threshold=128 * KiB, heap_top=204_928 + 32)
    assert (at.segments, at.reserved_bytes, at.allocated_bytes) == (0, 0, 200 * KiB + 16)
    short = glibc_allocations([200 * KiB], mmap_threshold=128 * KiB, heap_top=204_928 + 31)
    assert (short.segments, short.reserved_bytes, short.allocated_bytes) == (1, 200 * KiB + 4096, 200 * KiB + 4096)
    # under the threshold a request is a heap chunk even when the top is empty (the heap grows)
    small = glibc_allocations([1000], mmap_threshold=128 * KiB, heap_top=0)
    assert (small.segments, small.reserved_bytes, small.allocated_bytes) == (0, 0, 1008)
    # a request exactly at the threshold is mmapped (glibc: nb >= mp_.mmap_threshold)
    exact = glibc_allocations([100], mmap_threshold=224, heap_top=0)  # 100 B asks chunk(112 + 96) = 224 B
    assert (exact.segments, exact.reserved_bytes) == (1, 4096)


def test_free_blocks_without_pool_or_stream_fields():
    # an older snapshot without segment_pool_id / stream: the default pool, the current stream
    snapshot = [{"device": 0, "segment_type": "large", "blocks": [{"size": 4 * MiB, "state": "inactive"}]}]
    assert free_blocks(snapshot, 0, 12345) == [(4 * MiB, False)]
    assert free_blocks(snapshot, 1, 12345) == []
