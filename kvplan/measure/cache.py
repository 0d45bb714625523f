"""Pre-allocated per-layer caches, sized by the calculator's tokens-held rule.

What the cache holds: the prompt (`--context` tokens) plus one token per decode
step, so a run of context C and S decode steps holds T = C + S tokens and is
predicted at T. Per layer kind (B = batch):

- full attention: K (B, H_kv, T, D) and V (B, H_kv, T, D_v), gpt-fast style;
- sliding window W: a ring of min(T, W) slots, token p in slot p mod slots;
- chunked local C: a ring of min(T, C) slots; slots from the previous chunk are
  masked, so the ring never needs clearing;
- MLA: one latent (B, T, kv_lora_rank + qk_rope_head_dim);
- state: fixed conv + SSM tensors per sequence, as `StateDims.state_shapes`;
- KV-shared: nothing (the layer reads its donor's cache).

All tensors are allocated with `torch.zeros` (so their pages are touched and show
in resident memory) through the ordinary allocator: never managed memory.
Every update is an `index_copy_` on a position tensor, with no host sync, so a
decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from kvplan.model.kinds import KINDS
from kvplan.measure.predict import RunArch
from kvplan.model.spec import LayerKind

TORCH_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
FP8_DTYPES = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
CACHE_DTYPE_NAMES = sorted([*TORCH_DTYPES, *FP8_DTYPES])


def cache_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a KV format name; None for formats measure cannot store."""
    if name in TORCH_DTYPES:
        return TORCH_DTYPES[name]
    if name in FP8_DTYPES:
        return getattr(torch, FP8_DTYPES[name], None)
    return None


def _byte_view(t: torch.Tensor) -> torch.Tensor:
    # index_copy_ has no fp8 kernel (torch 2.13 CPU); copying the raw bytes is the same write.
    return t.view(torch.uint8) if t.element_size() == 1 and t.is_floating_point() else t


def _write(buffer: torch.Tensor, dim: int, slots: torch.Tensor, values: torch.Tensor) -> None:
    _byte_view(buffer).index_copy_(dim, slots, _byte_view(values.to(buffer.dtype)))


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def held_positions(pos: torch.Tensor, slots: int) -> torch.Tensor:
    """The absolute position held in each slot of a ring written as p -> p mod slots,
    after position `pos` (shape (1,)) was written; negative = never written.

    Slot s holds the latest q <= pos with q = s (mod slots): q = pos - ((pos - s) mod slots).
    For a full cache (slots = T > pos) this is s for s <= pos and negative after.
    """
    s = torch.arange(slots, device=pos.device)
    return pos - torch.remainder(pos - s, slots)


class KVCache:
    """K and V of one attention layer: full (T slots), sliding or chunked (a ring)."""

    def __init__(
        self,
        kind: LayerKind,
        window: int | None,
        batch: int,
        kv_heads: int,
        slots: int,
        k_dim: int,
        v_dim: int,
        k_dtype: torch.dtype,
        v_dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.kind, self.window, self.slots = kind, window, slots
        self.k = torch.zeros(batch, kv_heads, slots, k_dim, dtype=k_dtype, device=device)  # (B, H_kv, T, D)
        self.v = torch.zeros(batch, kv_heads, slots, v_dim, dtype=v_dtype, device=device)  # (B, H_kv, T, D_v)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write K, V (B, H_kv, S, D) of absolute positions `pos` (S,); a ring keeps the last `slots`."""
        if pos.shape[0] > self.slots:
            pos, k, v = pos[-self.slots :], k[:, :, -self.slots :], v[:, :, -self.slots :]
        slot = torch.remainder(pos, self.slots)
        _write(self.k, 2, slot, k)
        _write(self.v, 2, slot, v)

    def mask(self, pos: torch.Tensor) -> torch.Tensor:
        """(slots,) bool: which slots a query at `pos` (1,) may attend to."""
        held = held_positions(pos, self.slots)
        allowed = held >= 0
        rule = KINDS[self.kind]
        if rule.windowed:
            assert self.window is not None
            # the kind's window (sliding: the last W tokens; chunked: this chunk). A sliding ring of
            # min(T, W) slots holds no older token, so there it only states the rule (it matters if
            # slots ever exceed W); a chunked ring keeps the previous chunk's slots, masked here.
            allowed = allowed & rule.in_window(pos, held, self.window)
        return allowed

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v]


class LatentCache:
    """MLA: one (B, T, kv_lora_rank + qk_rope_head_dim) latent per layer."""

    kind = LayerKind.MLA

    def __init__(self, batch: int, slots: int, latent_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.slots = slots
        self.latent = torch.zeros(batch, slots, latent_dim, dtype=dtype, device=device)  # (B, T, r + d_rope)

    def update(self, pos: torch.Tensor, latent: torch.Tensor) -> None:
        """Write latents (B, S, r + d_rope) at positions `pos` (S,)."""
        _write(self.latent, 1, pos, latent)

    def mask(self, pos: torch.Tensor) -> torch.Tensor:
        return held_positions(pos, self.slots) >= 0

    def tensors(self) -> list[torch.Tensor]:
        return [self.latent]


class StateCache:
    """A state layer's fixed-size per-sequence tensors (conv window + SSM state)."""

    kind = LayerKind.STATE

    def __init__(self, shapes: dict[str, tuple[int, ...]], batch: int, dtype: torch.dtype, device: torch.device) -> None:
        self.states = {name: torch.zeros(batch, *shape, dtype=dtype, device=device) for name, shape in shapes.items()}

    def tensors(self) -> list[torch.Tensor]:
        return list(self.states.values())


LayerCache = KVCache | LatentCache | StateCache


def allocate_caches(
    arch: RunArch,
    total_tokens: int,
    batch: int,
    k_dtype: torch.dtype,
    v_dtype: torch.dtype,
    state_dtype: torch.dtype,
    device: torch.device,
) -> list[LayerCache | None]:
    """One cache per layer (None for KV-shared layers), for `total_tokens` tokens of `batch` sequences."""
    caches: list[LayerCache | None] = []
    for layer in arch.layers:
        kind = layer.kind
        if kind is LayerKind.SHARED:
            caches.append(None)
        elif kind is LayerKind.STATE:
            assert arch.state is not None
            caches.append(StateCache(arch.state.state_shapes(), batch, state_dtype, device))
        elif kind is LayerKind.MLA:
            assert arch.mla is not None
            caches.append(LatentCache(batch, total_tokens, arch.mla.latent_dim, k_dtype, device))
        else:
            window = arch.window(kind)
            slots = KINDS[kind].tokens_held(total_tokens, window)  # the calculator's rule: min(T, W) for windows
            caches.append(
                KVCache(kind, window, batch, arch.kv_heads, slots, arch.head_dim, arch.v_head_dim, k_dtype, v_dtype, device)
            )
    return caches


def cache_tensors(caches: list[LayerCache | None]) -> list[torch.Tensor]:
    return [t for c in caches if c is not None for t in c.tensors()]
