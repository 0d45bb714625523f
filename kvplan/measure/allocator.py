"""How the allocators under torch round a run's cache tensors: pure, no torch, no I/O.

The calculator gives the cache tensors' exact bytes; what an allocator reports
moving is more, by rules this module models so that `kvplan measure` can predict
the allocator's own readings to the byte and name the difference.

CUDA: torch's caching allocator (c10/cuda/CUDACachingAllocator.cpp, default
settings, i.e. no PYTORCH_CUDA_ALLOC_CONF):
- every request is rounded up to a multiple of 512 B (`round_size`);
- rounded requests up to 1 MiB go to the small pool, larger ones to the large pool;
- a request takes the smallest free block of its pool that fits (best fit); with
  none, the allocator cudaMallocs a segment: 2 MiB for the small pool, 20 MiB for
  requests under 10 MiB, else the request rounded up to 2 MiB (`get_allocation_size`);
- the block is split, and the rest stays free in the pool, only if the rest is at
  least 512 B (small pool) or more than 1 MiB (large pool); otherwise the tensor
  holds the whole block, and `memory_allocated` counts the whole block
  (`should_split`, `alloc_found_block`).
`memory_reserved` grows by the segments cudaMalloc'd; NVML's used memory by the same
segments (each a multiple of 2 MiB, the driver's page for them).

CPU: glibc malloc with the mmap threshold pinned (see readings.GlibcMalloc). torch
asks `posix_memalign(64, n)`; glibc's `_int_memalign` requests n padded to a chunk
plus 64 + 32 B of alignment slack, and a request of at least the threshold that the
heap's top chunk cannot serve gets its own mmap of that chunk plus 8 B, rounded up
to a page.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Iterable

from kvplan.model.layout import ceil_div

MiB = 2**20

# c10/cuda/CUDACachingAllocator.cpp (and c10/core/CachingDeviceAllocator.h)
CUDA_MIN_BLOCK = 512  # kMinBlockSize: every block is a multiple of this
CUDA_SMALL_SIZE = 1 * MiB  # kSmallSize: largest request of the small pool
CUDA_SMALL_BUFFER = 2 * MiB  # kSmallBuffer: a small-pool segment
CUDA_LARGE_BUFFER = 20 * MiB  # kLargeBuffer: the segment for 1-10 MiB requests
CUDA_MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc: from here a segment is the request rounded
CUDA_ROUND_LARGE = 2 * MiB  # kRoundLarge


def cuda_round_size(nbytes: int) -> int:
    """The block a request of `nbytes` asks for: at least 512 B, a multiple of 512 B."""
    return max(CUDA_MIN_BLOCK, ceil_div(nbytes, CUDA_MIN_BLOCK) * CUDA_MIN_BLOCK)


def cuda_segment_size(block: int) -> int:
    """The segment cudaMalloc'd for a (rounded) request no free block fits."""
    if block <= CUDA_SMALL_SIZE:
        return CUDA_SMALL_BUFFER
    if block < CUDA_MIN_LARGE_ALLOC:
        return CUDA_LARGE_BUFFER
    return ceil_div(block, CUDA_ROUND_LARGE) * CUDA_ROUND_LARGE


def _splits(small: bool, remaining: int) -> bool:
    return remaining >= CUDA_MIN_BLOCK if small else remaining > CUDA_SMALL_SIZE


@dataclass(frozen=True, slots=True)
class AllocatorDelta:
    """What allocating a run's tensors adds to an allocator's counters, bytes."""

    requested_bytes: int  # the tensors' storage
    allocated_bytes: int  # CUDA: memory_allocated; CPU: malloc in use (chunks)
    reserved_bytes: int  # CUDA: memory_reserved (new segments); CPU: new mmapped chunks
    segments: int  # CUDA: cudaMalloc calls; CPU: mmap calls

    @property
    def rounding_bytes(self) -> int:
        """allocated - requested: what the allocator's rounding adds."""
        return self.allocated_bytes - self.requested_bytes


def cuda_allocations(sizes: Iterable[int], free_blocks: Iterable[tuple[int, bool]] = ()) -> AllocatorDelta:
    """Allocate tensors of `sizes` bytes, in order, on one stream of torch's CUDA caching
    allocator whose default pool holds `free_blocks` ((bytes, in the small pool)) already.

    Blocks are never freed in between (a cache is allocated tensor after tensor)."""
    pools: dict[bool, list[int]] = {True: [], False: []}
    for size, small in free_blocks:
        insort(pools[small], size)
    requested = allocated = reserved = segments = 0
    for nbytes in sizes:
        block = cuda_round_size(nbytes)
        small = block <= CUDA_SMALL_SIZE
        pool = pools[small]
        at = bisect_left(pool, block)  # best fit: the smallest free block that is big enough
        if at < len(pool):
            found = pool.pop(at)
        else:
            found = cuda_segment_size(block)
            reserved += found
            segments += 1
        remaining = found - block
        if _splits(small, remaining):
            insort(pool, remaining)
            found = block
        requested += nbytes
        allocated += found
    return AllocatorDelta(requested, allocated, reserved, segments)


def free_blocks(segments: list[dict], device_index: int, stream: int) -> list[tuple[int, bool]]:
    """The free blocks of a `torch.cuda.memory_snapshot()` that a new tensor on `device_index`
    and `stream` may reuse: (bytes, in the small pool), from the default pool's segments.

    A snapshot segment holds `device`, `stream`, `segment_type` ("small" / "large"),
    `segment_pool_id` ((0, 0) for the default pool; CUDA graphs own others) and `blocks`,
    each with `size` and `state` ("active_allocated", "active_awaiting_free", "inactive")."""
    found = []
    for segment in segments:
        if segment.get("device") != device_index or tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0):
            continue
        if segment.get("stream", stream) != stream:
            continue
        small = segment.get("segment_type") == "small"
        found.extend((block["size"], small) for block in segment["blocks"] if block["state"] == "inactive")
    return found


# glibc malloc, x86_64 and aarch64 (malloc/malloc.c): SIZE_SZ 8, MALLOC_ALIGNMENT 16
GLIBC_SIZE_SZ = 8
GLIBC_MALLOC_ALIGNMENT = 16
GLIBC_MIN_CHUNK = 32  # MINSIZE
TORCH_CPU_ALIGNMENT = 64  # c10 alloc_cpu: posix_memalign(&data, gAlignment = 64, nbytes)


def glibc_chunk_size(nbytes: int) -> int:
    """request2size: the chunk (header included) a request of `nbytes` needs."""
    padded = nbytes + GLIBC_SIZE_SZ + GLIBC_MALLOC_ALIGNMENT - 1
    return max(GLIBC_MIN_CHUNK, padded & ~(GLIBC_MALLOC_ALIGNMENT - 1))


def glibc_memalign_request(nbytes: int) -> int:
    """The chunk `_int_memalign` asks `_int_malloc` for: the aligned chunk + alignment + MINSIZE."""
    return glibc_chunk_size(glibc_chunk_size(nbytes) + TORCH_CPU_ALIGNMENT + GLIBC_MIN_CHUNK)


def glibc_mmap_bytes(nbytes: int, page: int = 4096) -> int:
    """Bytes glibc mmaps for torch's `posix_memalign(64, nbytes)` served by mmap:
    the request chunk plus SIZE_SZ, rounded up to a page (sysmalloc)."""
    return ceil_div(glibc_memalign_request(nbytes) + GLIBC_SIZE_SZ, page) * page


def glibc_allocations(sizes: Iterable[int], mmap_threshold: int, heap_top: int, page: int = 4096) -> AllocatorDelta:
    """torch CPU tensors of `sizes` bytes under glibc with its mmap threshold pinned at
    `mmap_threshold`, the heap's top chunk holding `heap_top` bytes (mallinfo2 keepcost).

    glibc serves a request from its free lists, else from the top chunk if that keeps
    MINSIZE spare, else, at or above the threshold, with its own mmap (`_int_malloc`,
    `sysmalloc`). The model reads only the top chunk: a free-list chunk big enough for
    a request of 400 KiB or more is rare (freed chunks that big were mmapped and went
    back to the kernel), but one can serve a smaller request that the model counts
    as mmapped; a heap chunk is the tensor + 8 B in 16 B steps (`glibc_chunk_size`).
    """
    requested = allocated = reserved = segments = 0
    for nbytes in sizes:
        requested += nbytes
        request = glibc_memalign_request(nbytes)
        if request >= mmap_threshold and heap_top < request + GLIBC_MIN_CHUNK:
            chunk = glibc_mmap_bytes(nbytes, page)
            reserved += chunk
            segments += 1
        else:
            chunk = glibc_chunk_size(nbytes)
            heap_top = max(0, heap_top - request)
        allocated += chunk
    return AllocatorDelta(requested, allocated, reserved, segments)
