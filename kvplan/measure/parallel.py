"""`kvplan measure --tp N [--pp M]`: N x M ranks under torch.distributed, each with its own shard and cache.

Launch. Without the rendezvous variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) kvplan
spawns the N x M ranks itself on this machine (multiprocessing "spawn", a free TCP port on
127.0.0.1) and watches them: a rank that raises, dies (a signal, a non-zero exit) or is still
running at --timeout ends the command, every rank is terminated (then killed) so its memory goes
back, and the error names the rank. With those variables set (torchrun, several nodes) this
process is one rank: it joins the group by env://, rank 0 gathers every rank's readings and
prints, the others print nothing; a rank stuck in a collective raises at the process group's
timeout (--timeout), and torchrun tears the others down.

Backend: gloo on the CPU, NCCL on CUDA (one GPU per rank: LOCAL_RANK, else rank mod the GPUs).

Ranks: global rank = stage x tp + tp rank (tensor-parallel ranks adjacent, as vLLM orders them).
Each rank builds the whole run decoder from the seed (so the sharded model is the same model as
`kvplan measure` without --tp, and its logits can be checked against it), keeps only its shard
and drops the rest. The shard is vLLM's:

- attention: q_proj column-parallel by query heads, k_proj / v_proj by KV heads, each rank holding
  KV heads / tp of them or, with fewer KV heads than ranks, one replicated head (rank r holds head
  r x KV heads // tp: `ModelConfig.get_num_kv_heads`, `QKVParallelLinear`); o_proj row-parallel;
- MLA: q_a_proj, kv_a_proj_with_mqa and their norms replicated, q_b_proj / kv_b_proj by heads,
  o_proj row-parallel; the latent cache whole on every rank;
- Mamba: in_proj column-parallel by channels (Mamba-2: z, x, the B/C groups, dt heads; groups
  replicated to tp when n_groups % tp, `extra_groups_for_head_shards`), conv, A, D by channels,
  x_proj (Mamba-1) and out_proj row-parallel; the state channels split;
- MLP: gate / up column-parallel, down row-parallel; the embedding vocab-parallel (masked lookup,
  all-reduce), the LM head vocab-parallel (all-gather of the logits);
- pipeline: layers per stage as `get_pp_indices`; the hidden states sent to the next stage's rank
  of the same tp rank (torch.distributed send / recv).

What each rank reads: its cache's tensor storage (beside the calculator's per-rank bytes for its
stage), the allocator's Δ (CUDA) or RSS Δ (CPU) over the allocation, its prefill and decode step
times, and every all-reduce of a timed decode step (count, message bytes, seconds: synchronised
before and after each), beside the communication model of `kvplan.plan.comm` with the link's
latency and bandwidth fitted from two all-reduce probes (4 bytes and 4 MiB) on the same group.

Test hook: KVPLAN_MEASURE_FAULT=kill:R (rank R kills itself with SIGKILL after its first prefill)
or hang:R (rank R sleeps instead of decoding) exercises the teardown.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import socket
import statistics
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kvplan.errors import InputError, KvplanError
from kvplan.measure import readings as rd
from kvplan.measure.cache import allocate_caches, cache_dtype, cache_tensors, storage_bytes
from kvplan.measure.model import Attention, Decoder, MLAttention, StateLayer, rms_norm
from kvplan.measure.predict import LayerPlan, RunArch, StateDims, build_arch, truncate_spec
from kvplan.model.layout import CacheLayout, pp_partition
from kvplan.model.shape import LayerKind
from kvplan.plan.comm import allreduces_per_stage, ring_allreduce_seconds, ring_allreduce_wire_bytes

# All-reduce probes that fit the link: a 4-byte message is all latency, 4 MiB mostly bandwidth.
PROBE_SMALL_BYTES = 4
PROBE_LARGE_BYTES = 4 << 20
PROBE_REPEATS = 10
DEFAULT_TIMEOUT_S = 600.0
FAULT_VARIABLE = "KVPLAN_MEASURE_FAULT"
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# The phases a rank reports, in order: a hung rank is the one furthest behind.
PHASES = ("starting", "joined", "built", "probed", "prefilled", "decoding", "verifying", "done")


@dataclass(frozen=True)
class ParallelOptions:
    tp: int = 1
    pp: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S


# ------------------------------------------------------------------ the rank's shapes


def stage_layers(arch: RunArch, pp: int, stage: int) -> range:
    per = pp_partition(len(arch.layers), pp)
    start = sum(per[:stage])
    return range(start, start + per[stage])


def rank_arch(arch: RunArch, tp: int, layers: range) -> RunArch:
    """The shapes one rank allocates: its heads, KV heads, state channels, its stage's layers."""
    if tp > 1 and arch.state is not None and arch.state.variant in ("kda", "shortconv"):
        raise InputError(f"{arch.spec.name}: kvplan measure --tp cannot shard {arch.state.variant} state layers yet "
                         "(Kimi Delta Attention, LFM2 short convolutions); run it with --tp 1 or size it with "
                         "`kvplan estimate`")
    plans = []
    for i in layers:
        layer = arch.layers[i]
        donor = layer.donor
        if donor is not None and donor not in layers:
            raise InputError(
                f"{arch.spec.name}: layer {i} reads layer {donor}'s KV cache, which another pipeline stage holds; "
                "use a --pp that keeps them on one stage"
            )
        if layer.mlp_width % tp:
            raise InputError(
                f"--tp {tp} does not divide {arch.spec.name}'s MLP width {layer.mlp_width:,} (layer {i}); use a divisor"
            )
        plans.append(dataclasses.replace(layer, index=i - layers.start, donor=None if donor is None else donor - layers.start))
    state = arch.state
    if state is not None:
        state = _rank_state(state, tp)
    return dataclasses.replace(
        arch,
        layers=tuple(plans),
        heads=arch.heads // tp,
        kv_heads=arch.kv_heads if arch.mla else max(1, arch.kv_heads // tp),
        state=state,
    )


def _rank_groups(s: StateDims, tp: int, r: int = 0) -> tuple[int, int]:
    """Mamba-2: (first group, groups) rank r holds: split when n_groups % tp == 0, else replicated to tp
    (vLLM extra_groups_for_head_shards), one a rank: rank r's heads lie in group r x n_groups // tp."""
    if s.n_groups % tp == 0:
        per = s.n_groups // tp
        return r * per, per
    return r * s.n_groups // tp, 1


def _rank_state(s: StateDims, tp: int) -> StateDims:
    if s.variant == "mamba2":
        return dataclasses.replace(s, d_inner=s.d_inner // tp, n_heads=s.n_heads // tp, n_groups=_rank_groups(s, tp)[1])
    return dataclasses.replace(s, d_inner=s.d_inner // tp)


# ------------------------------------------------------------------ sharding


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous().clone(), requires_grad=False)


def _rows(t: torch.Tensor, start: int, n: int) -> torch.Tensor:
    return t[start : start + n]


def _cols(t: torch.Tensor, start: int, n: int) -> nn.Parameter:
    return _param(t[:, start : start + n])


def _shard_attention(m: Attention, arch: RunArch, tp: int, r: int) -> None:
    hq, D, Dv = arch.heads // tp, arch.head_dim, arch.v_head_dim
    q0 = r * hq
    m.q_proj = _param(_rows(m.q_proj, q0 * D, hq * D))
    kv = max(1, arch.kv_heads // tp)
    k0 = r * arch.kv_heads // tp  # split: r x kv/tp; replicated: the head rank r shares with tp/kv - 1 others
    if m.owns_kv:
        m.k_proj = _param(_rows(m.k_proj, k0 * D, kv * D))
        m.v_proj = _param(_rows(m.v_proj, k0 * Dv, kv * Dv))
    m.o_proj = _cols(m.o_proj, q0 * Dv, hq * Dv)
    m.heads, m.kv_heads = hq, kv


def _shard_mla(m: MLAttention, arch: RunArch, tp: int, r: int) -> None:
    mla = arch.mla
    assert mla is not None
    hq = arch.heads // tp
    q0 = r * hq
    qk = mla.nope_dim + mla.rope_dim
    if mla.q_lora_rank:
        m.q_b_proj = _param(_rows(m.q_b_proj, q0 * qk, hq * qk))
    else:
        m.q_proj = _param(_rows(m.q_proj, q0 * qk, hq * qk))
    kvb = mla.nope_dim + mla.v_dim
    m.kv_b_proj = _param(_rows(m.kv_b_proj, q0 * kvb, hq * kvb))
    m.o_proj = _cols(m.o_proj, q0 * mla.v_dim, hq * mla.v_dim)
    m.heads = hq


def _shard_state(m: StateLayer, arch: RunArch, tp: int, r: int, reduce: Callable) -> None:
    s = arch.state
    assert s is not None
    dr = s.d_inner // tp
    c0 = r * dr
    if s.variant == "recurrence":
        m.in_proj = _param(_rows(m.in_proj, c0, dr))
        m.decay = _param(_rows(m.decay, c0, dr))
        m.out_proj = _cols(m.out_proj, c0, dr)
    elif s.variant == "mamba1":
        m.in_proj = _param(torch.cat([_rows(m.in_proj, c0, dr), _rows(m.in_proj, s.d_inner + c0, dr)]))
        for name in ("conv_weight", "conv_bias", "dt_proj", "dt_proj_bias", "A_log", "D"):
            setattr(m, name, _param(_rows(getattr(m, name), c0, dr)))
        m.x_proj = _cols(m.x_proj, c0, dr)  # row-parallel: partial dt/B/C, summed by `reduce`
        m.reduce = reduce
    else:  # mamba2: in_proj = [z (d_inner), x (d_inner), B (G N), C (G N), dt (H)]; conv over [x, B, C]
        N, G, H = s.d_state, s.n_groups, s.n_heads
        g0, groups = _rank_groups(s, tp, r)
        hr = H // tp
        h0 = r * hr
        di = s.d_inner

        def xbc(t: torch.Tensor, base: int) -> torch.Tensor:
            return torch.cat([
                _rows(t, base + c0, dr),
                _rows(t, base + di + g0 * N, groups * N),
                _rows(t, base + di + G * N + g0 * N, groups * N),
            ])

        m.in_proj = _param(torch.cat([
            _rows(m.in_proj, c0, dr), xbc(m.in_proj, di), _rows(m.in_proj, 2 * di + 2 * G * N + h0, hr)
        ]))
        m.conv_weight = _param(xbc(m.conv_weight, 0))
        m.conv_bias = _param(xbc(m.conv_bias, 0))
        for name in ("A_log", "D", "dt_bias"):
            setattr(m, name, _param(_rows(getattr(m, name), h0, hr)))
    if s.variant != "recurrence":
        m.out_proj = _cols(m.out_proj, c0, dr)
    m.s = _rank_state(s, tp)


class Comm:
    """The rank's collectives, each one counted and timed (synchronised before and after)."""

    def __init__(self, device: torch.device, tp_group, tp: int, stage: int, pp: int, tp_rank: int) -> None:
        self.device, self.group, self.tp, self.stage, self.pp, self.tp_rank = device, tp_group, tp, stage, pp, tp_rank
        self.reset()

    def reset(self) -> None:
        self.allreduces = 0
        self.allreduce_bytes = 0
        self.allreduce_s = 0.0
        self.p2p_bytes = 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return x
        x = x.contiguous()
        rd.sync(self.device)
        t0 = time.perf_counter()
        dist.all_reduce(x, group=self.group)
        rd.sync(self.device)
        self.allreduce_s += time.perf_counter() - t0
        self.allreduces += 1
        self.allreduce_bytes += x.numel() * x.element_size()
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.tp)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=-1)

    def _peer(self, stage: int) -> int:
        return stage * self.tp + self.tp_rank

    def send_next(self, x: torch.Tensor) -> None:
        x = x.contiguous()
        dist.send(x, self._peer(self.stage + 1))
        self.p2p_bytes += x.numel() * x.element_size()

    def recv_prev(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        x = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(x, self._peer(self.stage - 1))
        return x


class ShardedDecoder:
    """One rank's stage of the decoder: its layers' shards, the vocab-parallel embedding (first stage)
    and LM head (last stage). `prefill` / `decode` as `Decoder`'s; logits on the last stage, else None."""

    def __init__(self, full: Decoder, arch: RunArch, tp: int, tp_rank: int, layers: range, comm: Comm) -> None:
        self.arch, self.comm, self.layers = arch, comm, layers
        self.first, self.last = comm.stage == 0, comm.stage == comm.pp - 1
        self.dtype = full.embed_tokens.dtype
        per = -(-arch.vocab // tp)
        self.vocab_lo, self.vocab_per = tp_rank * per, per

        def vocab_shard(w: torch.Tensor) -> torch.Tensor:
            part = w[self.vocab_lo : self.vocab_lo + per]
            if part.shape[0] < per:  # the last rank's rows padded to the others' (vLLM pads the vocab too)
                part = torch.cat([part, part.new_zeros(per - part.shape[0], part.shape[1])])
            return part.contiguous().clone()

        self.embed = vocab_shard(full.embed_tokens) if self.first else None
        self.head = vocab_shard(full.lm_head) if self.last else None
        self.norm = full.norm.detach().clone() if self.last else None
        self.blocks = []
        for i in layers:
            block = full.layers[i]
            mixer = block.mixer
            if isinstance(mixer, StateLayer):
                _shard_state(mixer, arch, tp, tp_rank, comm.all_reduce)
            elif isinstance(mixer, MLAttention):
                _shard_mla(mixer, arch, tp, tp_rank)
            else:
                _shard_attention(mixer, arch, tp, tp_rank)
            w = block.layer.mlp_width // tp
            block.gate_proj = _param(_rows(block.gate_proj, tp_rank * w, w))
            block.up_proj = _param(_rows(block.up_proj, tp_rank * w, w))
            block.down_proj = _cols(block.down_proj, tp_rank * w, w)
            block.reduce = comm.all_reduce
            self.blocks.append(block)

    def parameter_bytes(self) -> int:
        tensors = [p for b in self.blocks for p in b.parameters()]
        tensors += [t for t in (self.embed, self.head, self.norm) if t is not None]
        return storage_bytes(tensors)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.embed is not None
        local = tokens - self.vocab_lo
        inside = (local >= 0) & (local < self.vocab_per)
        x = F.embedding(local.clamp(0, self.vocab_per - 1), self.embed) * inside.unsqueeze(-1).to(self.dtype)
        return self.comm.all_reduce(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        assert self.head is not None and self.norm is not None
        logits = self.comm.all_gather_last(F.linear(rms_norm(x, self.norm), self.head))
        return logits[..., : self.arch.vocab]

    def _input(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.first:
            return self._embed(tokens)
        return self.comm.recv_prev((tokens.shape[0], tokens.shape[1], self.arch.hidden), self.dtype)

    def prefill(self, tokens: torch.Tensor, caches: list | None = None):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self._input(tokens)
        fresh: dict[int, tuple] = {}
        for i, block in enumerate(self.blocks):
            donor = block.layer.donor
            donor = None if donor is None else donor - self.layers.start
            x, kv = block.prefill(x, positions, caches[i] if caches is not None else None,
                                  fresh.get(donor) if donor is not None else None)
            if kv is not None:
                fresh[i] = kv
        if not self.last:
            self.comm.send_next(x)
            return None
        return self._head(x[:, -1:])

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, caches: list):
        x = self._input(tokens)
        for i, block in enumerate(self.blocks):
            donor = block.layer.donor
            x = block.decode(x, pos, caches[i] if donor is None else caches[donor - self.layers.start])
        if not self.last:
            self.comm.send_next(x)
            return None
        return self._head(x)


# ------------------------------------------------------------------ one rank


@dataclass(frozen=True)
class RankConfig:
    """What every rank needs (picklable: sent to spawned ranks)."""

    spec: object  # ModelSpec
    layers: int | None
    contexts: tuple[int, ...]
    batches: tuple[int, ...]
    decode_steps: int
    warmup_steps: int
    run_dtype: str
    k_dtype: str
    v_dtype: str
    state_dtype: str
    device: str  # cpu | cuda
    seed: int
    verify: bool
    tp: int
    pp: int
    timeout_s: float


def _probe_link(comm: Comm, device: torch.device) -> tuple[float, float] | None:
    """(latency s per ring step, link GB/s) fitted from the median of a 4-byte and a 4 MiB all-reduce
    under the ring model: t = 2(N-1) a + 2(N-1)/N M / b."""
    if comm.tp == 1:
        return None
    n = comm.tp

    def timed(nbytes: int) -> float:
        x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        times = []
        for _ in range(PROBE_REPEATS + 2):
            rd.sync(device)
            t0 = time.perf_counter()
            dist.all_reduce(x, group=comm.group)
            rd.sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[2:])

    small, large = timed(PROBE_SMALL_BYTES), timed(PROBE_LARGE_BYTES)
    latency = small / (2 * (n - 1))
    wire = ring_allreduce_wire_bytes(PROBE_LARGE_BYTES, n)
    gbps = wire / max(large - 2 * (n - 1) * latency, 1e-9) / 1e9
    return latency, gbps


def _fault(rank: int, phase: str) -> None:
    """The test hook (module docstring): kill:R or hang:R, after rank R's first prefill."""
    spec = os.environ.get(FAULT_VARIABLE, "")
    if not spec or phase != "prefilled":
        return
    what, _, who = spec.partition(":")
    if who.strip() != str(rank):
        return
    if what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif what == "hang":
        while True:
            time.sleep(3600)


def run_rank(conf: RankConfig, rank: int, world: int, report: Callable[[str], None]) -> dict:
    """One rank's whole run, the process group already joined; its readings as plain data."""
    tp, pp = conf.tp, conf.pp
    stage, tp_rank = divmod(rank, tp)
    if conf.device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    compute = cache_dtype(conf.run_dtype)
    k_dtype, v_dtype, state_dtype = cache_dtype(conf.k_dtype), cache_dtype(conf.v_dtype), cache_dtype(conf.state_dtype)
    assert compute and k_dtype and v_dtype and state_dtype
    groups = [dist.new_group(list(range(s * tp, (s + 1) * tp))) for s in range(pp)]  # every rank makes every group
    comm = Comm(device, groups[stage], tp, stage, pp, tp_rank)
    spec = truncate_spec(conf.spec, conf.layers)
    arch = build_arch(spec)
    layers = stage_layers(arch, pp, stage)
    rarch = rank_arch(arch, tp, layers)
    full = Decoder(arch, device, compute, conf.seed)
    checker = conf.verify and stage == pp - 1 and tp_rank == 0
    reference = verify_prompt = None
    if conf.verify:
        gen = torch.Generator(device=device).manual_seed(conf.seed + 2)
        verify_prompt = torch.randint(0, arch.vocab, (1, VERIFY_PROMPT_TOKENS + VERIFY_STEPS), device=device, generator=gen)
    if checker:  # the one-process decoder's logits, before sharding: the sharded model must give the same
        reference = full.prefill(verify_prompt).float()
    model = ShardedDecoder(full, arch, tp, tp_rank, layers, comm)
    del full
    rd.settle(device)
    report("built")
    link = _probe_link(comm, device)
    report("probed")
    runs = []
    for context in conf.contexts:
        for batch in conf.batches:
            runs.append(_run_one(conf, model, rarch, comm, device, rank, context, batch, k_dtype, v_dtype, state_dtype, link, report))
    out = {
        "rank": rank, "stage": stage, "tp_rank": tp_rank, "layers": len(layers), "first_layer": layers.start,
        "device": str(device), "parameter_bytes": model.parameter_bytes(), "runs": runs,
        "link_latency_s": link[0] if link else None, "link_gbps": link[1] if link else None,
    }
    if conf.verify:
        report("verifying")
        diff = _verify(model, rarch, device, conf, k_dtype, v_dtype, state_dtype, verify_prompt, reference, checker)
        if checker:
            out.update(diff)
    report("done")
    return out


def _run_one(conf, model: ShardedDecoder, rarch: RunArch, comm: Comm, device, rank: int, context: int, batch: int,
             k_dtype, v_dtype, state_dtype, link, report) -> dict:
    total = context + conf.decode_steps
    rd.settle(device)
    before_alloc = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    before_rss = rd.rss_bytes() if device.type == "cpu" else None
    caches = allocate_caches(rarch, total, batch, k_dtype, v_dtype, state_dtype, device)
    rd.sync(device)
    measured = storage_bytes(cache_tensors(caches))
    alloc_delta = torch.cuda.memory_allocated(device) - before_alloc if before_alloc is not None else None
    rss_delta = rd.rss_bytes() - before_rss if before_rss is not None else None
    by_kind: dict[str, int] = {}
    for layer, cache in zip(rarch.layers, caches):
        if cache is not None:
            by_kind[layer.kind.value] = by_kind.get(layer.kind.value, 0) + storage_bytes(cache.tensors())
    gen = torch.Generator(device=device).manual_seed(conf.seed + 1)
    tokens = torch.randint(0, rarch.vocab, (batch, total), device=device, generator=gen)
    comm.reset()
    prefill_s = rd.timed_once(device, lambda: model.prefill(tokens[:, :context], caches))
    prefill_allreduces, prefill_bytes = comm.allreduces, comm.allreduce_bytes
    report("prefilled")
    _fault(rank, "prefilled")
    report("decoding")
    step_tokens = tokens[:, context : context + 1].clone()
    pos = torch.zeros(1, dtype=torch.long, device=device)
    for i in range(conf.warmup_steps):
        pos.fill_(context + i % conf.decode_steps)
        model.decode(step_tokens, pos, caches)
    comm.reset()
    steps = []
    for i in range(conf.decode_steps):
        pos.fill_(context + i)
        rd.sync(device)
        t0 = time.perf_counter()
        model.decode(step_tokens, pos, caches)
        rd.sync(device)
        steps.append(time.perf_counter() - t0)
    n = conf.decode_steps
    act_bytes = torch.empty((), dtype=model.dtype).element_size()
    predicted = predicted_comm(rarch, comm.stage == 0, batch, 1, comm.tp, act_bytes, link)
    return {
        "context": context, "batch": batch, "total_tokens": total,
        "measured_kv_bytes": measured, "measured_kv_by_kind": by_kind,
        "allocated_delta_bytes": alloc_delta, "rss_delta_bytes": rss_delta,
        "prefill_s": prefill_s, "decode_step_s": statistics.median(steps),
        "prefill_allreduces": prefill_allreduces, "prefill_allreduce_bytes": prefill_bytes,
        "allreduces_per_step": comm.allreduces // n, "allreduce_bytes_per_step": comm.allreduce_bytes // n,
        "allreduce_s_per_step": comm.allreduce_s / n,
        "predicted_allreduces_per_step": predicted[0], "predicted_allreduce_bytes_per_step": predicted[1],
        "predicted_allreduce_wire_bytes_per_step": predicted[2], "predicted_allreduce_s_per_step": predicted[3],
        "p2p_bytes_per_step": comm.p2p_bytes // n,
    }


def predicted_comm(rarch: RunArch, first_stage: bool, batch: int, tokens: int, tp: int, act_bytes: int,
                   link: tuple[float, float] | None) -> tuple[int, int, int, float | None]:
    """(count, message bytes, ring wire bytes, seconds) of the all-reduces of one forward of `tokens`
    tokens per sequence on one rank of a stage (`kvplan.plan.comm`'s count): hidden-size messages of
    `act_bytes` per element, and Mamba-1's x_proj partial sums in fp32 (the scan's dtype),
    dt_rank + 2 d_state per sequence, once per token."""
    if tp == 1:
        return 0, 0, 0, 0.0
    s = rarch.state
    mamba1 = sum(1 for layer in rarch.layers if layer.kind is LayerKind.STATE) if s is not None and s.variant == "mamba1" else 0
    count = allreduces_per_stage(len(rarch.layers), mamba1, first_stage)
    hidden_msg = batch * tokens * rarch.hidden * act_bytes
    messages = [hidden_msg] * count.hidden_messages
    if s is not None and count.extra_state:
        messages += [batch * (s.dt_rank + 2 * s.d_state) * 4] * (count.extra_state * tokens)
    seconds = None if link is None else sum(ring_allreduce_seconds(m, tp, link[1], link[0]) for m in messages)
    return len(messages), sum(messages), sum(ring_allreduce_wire_bytes(m, tp) for m in messages), seconds


VERIFY_PROMPT_TOKENS = 6
VERIFY_STEPS = 2


def _verify(model: ShardedDecoder, rarch: RunArch, device, conf: RankConfig, k_dtype, v_dtype, state_dtype,
            prompt: torch.Tensor, reference: torch.Tensor | None, checker: bool) -> dict:
    """Every rank in step: the sharded recomputation of the whole verify prompt (checked against the
    one-process decoder's logits), then a prefill of its first tokens into fresh caches and decode
    steps, each checked against the sharded recomputation of its prefix. Figures from the checker
    (the last stage's tp rank 0)."""
    total = VERIFY_PROMPT_TOKENS + VERIFY_STEPS
    whole = model.prefill(prompt[:, :total])
    caches = allocate_caches(rarch, total, 1, k_dtype, v_dtype, state_dtype, device)
    model.prefill(prompt[:, :VERIFY_PROMPT_TOKENS], caches)
    pos = torch.zeros(1, dtype=torch.long, device=device)
    worst = scale = 0.0
    for i in range(VERIFY_STEPS):
        p = VERIFY_PROMPT_TOKENS + i
        pos.fill_(p)
        cached = model.decode(prompt[:, p : p + 1], pos, caches)
        recomputed = model.prefill(prompt[:, : p + 1])
        if checker:
            worst = max(worst, (cached.float() - recomputed.float()).abs().max().item())
            scale = max(scale, recomputed.float().abs().max().item())
    if not checker:
        return {}
    assert whole is not None and reference is not None
    return {
        "verify_max_abs_logit_diff": worst,
        "verify_logit_scale": scale,
        "one_process_max_abs_logit_diff": (whole.float() - reference).abs().max().item(),
    }


# ------------------------------------------------------------------ launch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def _spawned(conf: RankConfig, rank: int, world: int, port: int, threads: int, q) -> None:
    """A spawned rank's body: join, run, send the readings (or the error) to the parent."""
    def report(phase: str) -> None:
        q.put(("phase", rank, phase))

    try:
        torch.set_num_threads(threads)
        dist.init_process_group(
            _backend(conf.device), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=timedelta(seconds=conf.timeout_s),
        )
        report("joined")
        q.put(("ok", rank, run_rank(conf, rank, world, report)))
    except BaseException as exc:  # everything goes back to the parent, which names the rank
        q.put(("error", rank, _describe(exc)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KvplanError):
        return exc.message
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {os.path.basename(last[0].filename)}:{last[0].lineno}" if last else ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}{where}: {text}"[:300]


def _rank_name(rank: int, tp: int) -> str:
    stage, tp_rank = divmod(rank, tp)
    return f"rank {rank} (stage {stage}, tp rank {tp_rank})"


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch(conf: RankConfig, progress: Callable[[str], None]) -> list[dict]:
    """Spawn the tp x pp ranks here, wait for them; every rank's readings, by rank. Any rank's error,
    death or --timeout: all ranks torn down and a KvplanError (exit 1) naming the rank."""
    world = conf.tp * conf.pp
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    threads = max(1, (os.cpu_count() or 1) // world) if conf.device == "cpu" else 1
    procs = [ctx.Process(target=_spawned, args=(conf, r, world, port, threads, q), name=f"kvplan-rank-{r}") for r in range(world)]
    results: dict[int, dict] = {}
    phase = {r: "starting" for r in range(world)}
    deadline = time.monotonic() + conf.timeout_s
    try:
        for p in procs:
            p.start()
        while len(results) < world:
            try:
                kind, rank, payload = q.get(timeout=0.1)
            except queue_mod.Empty:
                dead = _dead(procs, results)
                if dead:
                    time.sleep(0.2)  # an error the dead rank sent before it died says more than its exit status
                    _drain_errors(q, conf, dead)
                    raise KvplanError(_death_text(conf, procs, dead[0], phase), exit_code=1)
                if time.monotonic() > deadline:
                    raise KvplanError(_timeout_text(conf, phase, results), exit_code=1)
                continue
            if kind == "phase":
                phase[rank] = payload
                if rank == 0:
                    progress(f"rank 0: {payload}")
            elif kind == "error":
                # a rank whose peer died fails in its collective ("Connection closed by peer"): the dead
                # rank is the cause, so wait a moment for its exit before naming this one
                limit = time.monotonic() + 2.0
                while not (dead := [r for r in _dead(procs, results) if r != rank]) and time.monotonic() < limit:
                    time.sleep(0.05)
                if dead:
                    raise KvplanError(_death_text(conf, procs, dead[0], phase) + f" ({_rank_name(rank, conf.tp)} then failed: "
                                      f"{payload[:120]})", exit_code=1)
                raise KvplanError(
                    f"kvplan measure --tp {conf.tp} --pp {conf.pp}: {_rank_name(rank, conf.tp)} failed: {payload}; "
                    "all ranks were stopped", exit_code=1)
            else:
                results[rank] = payload
        for p in procs:
            p.join(timeout=30)
    finally:
        _teardown(procs)
        q.close()
        q.cancel_join_thread()
    return [results[r] for r in range(world)]


def _dead(procs, results: dict) -> list[int]:
    """Ranks whose process ended without its readings and not cleanly (a signal, a non-zero status)."""
    return [r for r, p in enumerate(procs) if r not in results and p.exitcode not in (None, 0)]


def _death_text(conf: RankConfig, procs, rank: int, phase: dict[int, str]) -> str:
    return (f"kvplan measure --tp {conf.tp} --pp {conf.pp}: {_rank_name(rank, conf.tp)} {_exit_text(procs[rank].exitcode)} "
            f"after '{phase[rank]}'; all ranks were stopped")


def _drain_errors(q, conf: RankConfig, dead: list[int]) -> None:
    """Raise the error a dead rank sent before it died, if it sent one."""
    while True:
        try:
            kind, rank, payload = q.get_nowait()
        except queue_mod.Empty:
            return
        if kind == "error" and rank in dead:
            raise KvplanError(f"kvplan measure --tp {conf.tp} --pp {conf.pp}: {_rank_name(rank, conf.tp)} failed: "
                              f"{payload}; all ranks were stopped", exit_code=1)


def _timeout_text(conf: RankConfig, phase: dict[int, str], results: dict) -> str:
    waiting = [r for r in phase if r not in results]
    order = {name: i for i, name in enumerate(PHASES)}
    behind = min(order.get(phase[r], 0) for r in waiting)
    stuck = [r for r in waiting if order.get(phase[r], 0) == behind]
    others = [r for r in waiting if r not in stuck]
    text = (f"kvplan measure --tp {conf.tp} --pp {conf.pp}: no result within --timeout {conf.timeout_s:g} s: "
            + ", ".join(_rank_name(r, conf.tp) for r in stuck) + f" stopped after '{PHASES[behind]}'")
    if others:
        text += f" ({'ranks' if len(others) > 1 else 'rank'} {', '.join(map(str, others))} waiting on it)"
    return text + "; all ranks were stopped"


def _teardown(procs) -> None:
    """Terminate every rank still running, then kill what is left after a grace period."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    limit = time.monotonic() + 5
    for p in procs:
        if p.pid is not None:
            p.join(timeout=max(0.0, limit - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def under_torchrun() -> bool:
    """True when the rendezvous variables say this process is one rank of a launched group."""
    return all(v in os.environ for v in RENDEZVOUS_VARIABLES)


def join_torchrun(conf: RankConfig, progress: Callable[[str], None]) -> list[dict] | None:
    """This process as one rank (env://): every rank's readings on rank 0, None on the others."""
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if world != conf.tp * conf.pp:
        raise InputError(
            f"--tp {conf.tp} --pp {conf.pp} needs {conf.tp * conf.pp} ranks but WORLD_SIZE is {world}; "
            "launch that many (torchrun --nnodes x --nproc-per-node)"
        )
    dist.init_process_group(_backend(conf.device), init_method="env://", rank=rank, world_size=world,
                            timeout=timedelta(seconds=conf.timeout_s))
    try:
        out = run_rank(conf, rank, world, (lambda phase: progress(f"rank 0: {phase}")) if rank == 0 else (lambda phase: None))
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(out, gathered, dst=0)
        return gathered if rank == 0 else None
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ the report


@dataclass(frozen=True)
class RankRun:
    """One rank at one (context, batch): predicted beside measured."""

    rank: int
    stage: int
    tp_rank: int
    layers: int
    first_layer: int
    context: int
    batch: int
    total_tokens: int
    predicted_kv_bytes: int  # the calculator's bytes for one rank of this stage
    measured_kv_bytes: int  # the rank's cache tensors' storage
    kv_by_kind: tuple[tuple[str, int, int], ...]  # (kind, predicted, measured)
    stage_replication_bytes: int  # the stage's tp ranks together, less one copy of its layers' cache
    allocated_delta_bytes: int | None  # CUDA: torch allocated over the allocation
    rss_delta_bytes: int | None  # CPU: resident memory over the allocation
    prefill_s: float
    decode_step_s: float
    allreduces_per_step: int
    predicted_allreduces_per_step: int
    allreduce_bytes_per_step: int
    predicted_allreduce_bytes_per_step: int
    predicted_allreduce_wire_bytes_per_step: int
    allreduce_s_per_step: float
    predicted_allreduce_s_per_step: float | None
    p2p_bytes_per_step: int
    predicted_p2p_bytes_per_step: int


@dataclass(frozen=True)
class ParallelReport:
    model: str
    layers: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    ranks: int
    launch: str  # spawned | torchrun
    backend: str
    device: str
    dtype: str
    kv_cache_dtype: str
    layers_per_stage: tuple[int, ...]
    link_latency_s: float | None  # fitted by the probes (tp > 1), rank 0's group
    link_gbps: float | None
    runs: tuple[RankRun, ...]
    checker_rank: int | None
    verify_max_abs_logit_diff: float | None
    verify_logit_scale: float | None
    one_process_max_abs_logit_diff: float | None
    verify_tolerance: float | None
    notes: tuple[str, ...]

    @property
    def verify_ok(self) -> bool | None:
        if self.verify_max_abs_logit_diff is None:
            return None
        limit = self.verify_tolerance * max(self.verify_logit_scale or 0.0, 1.0)
        return self.verify_max_abs_logit_diff <= limit and (self.one_process_max_abs_logit_diff or 0.0) <= limit

    @property
    def kv_bytes_match(self) -> bool:
        return all(r.measured_kv_bytes == r.predicted_kv_bytes for r in self.runs)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["verify_ok"] = self.verify_ok
        out["runs"] = [dict(dataclasses.asdict(r), kv_by_kind=[
            {"kind": k, "predicted_bytes": p, "measured_bytes": m} for k, p, m in r.kv_by_kind]) for r in self.runs]
        return out


def rank_predictions(layout: CacheLayout, one_copy: CacheLayout, stage: int, total: int, batch: int) -> tuple[int, dict[str, int], int]:
    """(bytes, bytes by kind, the stage's replication bytes) the calculator predicts for one rank of `stage`."""
    counts = layout.stage_kind_counts[stage]
    by_kind: dict[str, int] = {}
    for g in layout.groups:
        n = counts.get(g.kind, 0)
        if n and (g.bytes_per_token_per_layer_rank or g.state_bytes_per_layer_rank):
            by_kind[g.kind.value] = batch * n * (
                g.bytes_per_token_per_layer_rank * g.rule.tokens_held(total, g.window) + g.state_bytes_per_layer_rank)
    rank = batch * layout.stage_rank_bytes(counts, total, paged=False)
    copy = batch * one_copy.stage_rank_bytes(one_copy.stage_kind_counts[stage], total, paged=False)
    return rank, by_kind, layout.tp * rank - copy


def assemble(conf: RankConfig, results: list[dict], layout: CacheLayout, one_copy: CacheLayout, act_bytes: int,
             kv_name: str, launch_mode: str, notes: tuple[str, ...], tolerance: float | None) -> ParallelReport:
    runs = []
    for res in results:
        for r in res["runs"]:
            rank_bytes, by_kind, replication = rank_predictions(layout, one_copy, res["stage"], r["total_tokens"], r["batch"])
            kinds = sorted(set(by_kind) | set(r["measured_kv_by_kind"]))
            last = res["stage"] == conf.pp - 1
            runs.append(RankRun(
                rank=res["rank"], stage=res["stage"], tp_rank=res["tp_rank"], layers=res["layers"], first_layer=res["first_layer"],
                context=r["context"], batch=r["batch"], total_tokens=r["total_tokens"],
                predicted_kv_bytes=rank_bytes, measured_kv_bytes=r["measured_kv_bytes"],
                kv_by_kind=tuple((k, by_kind.get(k, 0), r["measured_kv_by_kind"].get(k, 0)) for k in kinds),
                stage_replication_bytes=replication,
                allocated_delta_bytes=r["allocated_delta_bytes"], rss_delta_bytes=r["rss_delta_bytes"],
                prefill_s=r["prefill_s"], decode_step_s=r["decode_step_s"],
                allreduces_per_step=r["allreduces_per_step"], predicted_allreduces_per_step=r["predicted_allreduces_per_step"],
                allreduce_bytes_per_step=r["allreduce_bytes_per_step"],
                predicted_allreduce_bytes_per_step=r["predicted_allreduce_bytes_per_step"],
                predicted_allreduce_wire_bytes_per_step=r["predicted_allreduce_wire_bytes_per_step"],
                allreduce_s_per_step=r["allreduce_s_per_step"], predicted_allreduce_s_per_step=r["predicted_allreduce_s_per_step"],
                p2p_bytes_per_step=r["p2p_bytes_per_step"],
                predicted_p2p_bytes_per_step=0 if last else r["batch"] * layout.spec.hidden_size * act_bytes,
            ))
    checker = next((res for res in results if "verify_max_abs_logit_diff" in res), None)
    r0 = results[0]
    return ParallelReport(
        model=conf.spec.name, layers=layout.spec.num_hidden_layers, tensor_parallel_size=conf.tp,
        pipeline_parallel_size=conf.pp, ranks=conf.tp * conf.pp, launch=launch_mode, backend=_backend(conf.device),
        device=conf.device, dtype=conf.run_dtype, kv_cache_dtype=kv_name, layers_per_stage=tuple(layout.layers_per_stage),
        link_latency_s=r0["link_latency_s"], link_gbps=r0["link_gbps"], runs=tuple(runs),
        checker_rank=checker["rank"] if checker else None,
        verify_max_abs_logit_diff=checker["verify_max_abs_logit_diff"] if checker else None,
        verify_logit_scale=checker["verify_logit_scale"] if checker else None,
        one_process_max_abs_logit_diff=checker["one_process_max_abs_logit_diff"] if checker else None,
        verify_tolerance=tolerance if checker else None,
        notes=notes,
    )


def measure_parallel(opts, par: ParallelOptions) -> ParallelReport | None:
    """`kvplan measure --tp/--pp`: check the flags, predict, launch (or join torchrun), assemble.
    None on a torchrun rank other than 0 (rank 0 prints for all)."""
    from kvplan.measure.run import TORCH_DTYPES, VERIFY_TOLERANCE, _formats, run_dtype_of  # one module's rules, not copied

    say = opts.progress or (lambda message: None)
    spec = opts.spec
    run_dtype = run_dtype_of(opts)
    if par.tp < 1 or par.pp < 1:
        raise InputError(f"--tp and --pp must be at least 1, got --tp {par.tp} --pp {par.pp}")
    if not par.timeout_s > 0:
        raise InputError(f"--timeout {par.timeout_s:g}: give a positive number of seconds")
    kv_pair, state_format = _formats(opts, run_dtype)
    spec_run = truncate_spec(spec, opts.layers)
    arch = build_arch(spec_run)
    if par.pp > len(arch.layers):
        raise InputError(f"--pp {par.pp} is larger than the {len(arch.layers)} layers that run; use --layers {par.pp} or more")
    layout = CacheLayout(spec_run, kv_pair, tp=par.tp, pp=par.pp, state_format=state_format)  # tp rules: InputError
    one_copy = CacheLayout(spec_run, kv_pair, tp=1, pp=par.pp, state_format=state_format)
    for stage in range(par.pp):
        rank_arch(arch, par.tp, stage_layers(arch, par.pp, stage))  # refuses what cannot be sharded, before launch
    world = par.tp * par.pp
    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu (or auto)")
        if not under_torchrun() and torch.cuda.device_count() < world:
            raise InputError(
                f"--tp {par.tp} --pp {par.pp} needs {world} GPUs (one a rank) and torch sees {torch.cuda.device_count()}; "
                "use --device cpu, smaller --tp/--pp, or torchrun over several nodes"
            )
    conf = RankConfig(
        spec=spec, layers=opts.layers, contexts=tuple(opts.contexts), batches=tuple(opts.batches),
        decode_steps=opts.decode_steps, warmup_steps=opts.warmup_steps, run_dtype=run_dtype,
        k_dtype=kv_pair.k.name, v_dtype=kv_pair.v.name, state_dtype=state_format.name, device=device,
        seed=opts.seed, verify=opts.verify, tp=par.tp, pp=par.pp, timeout_s=par.timeout_s,
    )
    if under_torchrun():
        results = join_torchrun(conf, say)
        if results is None:
            return None
        mode = "torchrun"
    else:
        say(f"launching {world} ranks ({_backend(device)}, --tp {par.tp} --pp {par.pp}) ...")
        results = launch(conf, say)
        mode = "spawned"
    act_bytes = TORCH_DTYPES[run_dtype].itemsize
    notes = tuple(arch.notes) + (
        "each rank builds the whole run decoder from the seed and keeps its shard (vLLM's column / row-parallel "
        "split); its memory peaks at the whole decoder's weights while it shards",
        "predicted cache bytes per rank: the calculator's (kvplan estimate --tensor-parallel-size "
        "--pipeline-parallel-size) for one rank of the rank's stage, at context + decode steps tokens",
        "all-reduce time per decode step: each all-reduce synchronised and timed on its own; predicted = "
        "the ring model (2(N-1) x latency + 2(N-1)/N x message / bandwidth) with latency and bandwidth fitted "
        f"from a {PROBE_SMALL_BYTES}-byte and a {PROBE_LARGE_BYTES >> 20} MiB all-reduce on the same group; the "
        "LM head's all-gather of the logits (vocab-parallel) is not counted among them",
    )
    return assemble(conf, results, layout, one_copy, act_bytes, kv_pair.name, mode, notes,
                    VERIFY_TOLERANCE[run_dtype] if opts.verify else None)
