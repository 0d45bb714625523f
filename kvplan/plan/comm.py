"""Communication between tensor-parallel ranks and pipeline stages: pure, no torch, no I/O.

The model (the same in the planner and in `kvplan measure --tp`):

- a tensor-parallel layer sums its row-parallel outputs over the N ranks of its stage with one
  all-reduce after the attention (or state) mixer and one after the MLP (Megatron-LM's split, as
  vLLM's RowParallelLinear does); the input embedding is vocab-parallel, one more all-reduce per
  forward on the first stage; Mamba-1's x_proj is row-parallel, one more per state layer: per forward
  in the planner (vLLM 0.32 MambaMixer._ssm_transform projects all of a step's tokens at once, a message of
  tokens x (dt_rank + 2 d_state)), per token in `kvplan measure` (whose scan runs token by token);
- the message of one all-reduce is the tokens x hidden activations in the model's dtype;
- a ring all-reduce sends and receives 2(N - 1)/N x the message per rank in 2(N - 1) steps (a
  reduce-scatter, then an all-gather: Patarasuk & Yuan 2009, the algorithm NCCL's ring uses), so it
  takes NCCL's base latency + 2(N - 1) x latency per step + 2(N - 1)/N x message / link bandwidth;
- a pipeline stage hands its hidden states (tokens x hidden x dtype) to the next over the same
  link: latency + bytes / bandwidth per boundary;
- pipeline bubbles: with pp stages and one micro-batch in flight (a decode step, a single prompt),
  a token passes the stages one after another, so the step is the sum of the stages, each at its own
  layers (an uneven split's longer stage counts as it is), and the idle stages are the bubble,
  (pp - 1)/pp of each GPU's time. Overlapping micro-batches (GPipe's (m + pp - 1)/m, Huang et al. 2019)
  are not modelled: vLLM 0.32 keeps pp batches in flight (VllmConfig.max_concurrent_batches: "PP
  requires PP-size concurrent batches to fill the pipeline"), but a decoding request sits in one of
  them at a time, so how its running requests split over the batches is the scheduler's, not a rule
  kvplan can state; every micro-batch would also read its stage's weights again.
- data parallelism (`--data-parallel-size`, MoE models): a MoE layer all-gathers every instance's
  tokens over the dp group and reduce-scatters its outputs (vLLM 0.32's allgather_reducescatter
  backend), each a ring of dp - 1 steps: `ring_allgather_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass


def ring_allreduce_wire_bytes(message_bytes: int, ranks: int) -> int:
    """Bytes one rank sends (and receives) in a ring all-reduce of `message_bytes`: 2(N-1)/N x the
    message, rounded up to a whole byte (4 KiB over 8 ranks: 2 x 7 x 4096 / 8 = 7168)."""
    if ranks <= 1:
        return 0
    return -(-2 * (ranks - 1) * message_bytes // ranks)


# NCCL's fixed cost of launching one ring all-reduce, before its steps (src/graph/tuning.cc baseLat, Ring / LL,
# the protocol it picks for the small messages of decode): the planner adds it; `measure` fits its own latency.
NCCL_BASE_LATENCY_S = 3.6e-6


def ring_allreduce_seconds(message_bytes: int, ranks: int, link_gbps: float, latency_s: float, base_s: float = 0.0) -> float:
    """One ring all-reduce: `base_s` once, 2(N-1) steps of latency, and the wire bytes over the link (GB/s = 1e9 B/s)."""
    if ranks <= 1:
        return 0.0
    return base_s + 2 * (ranks - 1) * latency_s + ring_allreduce_wire_bytes(message_bytes, ranks) / (link_gbps * 1e9)


def all_to_all_wire_bytes(message_bytes: int, ranks: int) -> int:
    """Bytes one rank sends in an all-to-all of `message_bytes` (its tokens' rows, scattered evenly): the
    (N-1)/N of them bound for the other ranks, rounded up to a whole byte."""
    if ranks <= 1:
        return 0
    return -(-(ranks - 1) * message_bytes // ranks)


def all_to_all_seconds(message_bytes: int, ranks: int, link_gbps: float, latency_s: float, base_s: float = 0.0) -> float:
    """One pairwise all-to-all (N-1 exchange steps): `base_s` + (N-1) x latency + its wire bytes over the link."""
    if ranks <= 1:
        return 0.0
    return base_s + (ranks - 1) * latency_s + all_to_all_wire_bytes(message_bytes, ranks) / (link_gbps * 1e9)


def send_seconds(message_bytes: int, link_gbps: float, latency_s: float) -> float:
    """One point-to-point transfer between pipeline stages."""
    return latency_s + message_bytes / (link_gbps * 1e9)


@dataclass(frozen=True, slots=True)
class Link:
    """What connects the GPUs of one replica: bandwidth per direction per GPU, GB/s; latency per hop, s."""

    name: str
    gbps: float
    latency_s: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class AllReduceCount:
    """The all-reduces one forward pass of one pipeline stage issues on one rank."""

    per_layer: int  # mixer + MLP: 2 for every layer (1 for a one-block layer)
    extra_state: int  # Mamba-1 x_proj: one per such layer (per forward in vLLM; per token in measure's scan)
    embedding: int  # 1 on the first stage (vocab-parallel embedding)

    @property
    def hidden_messages(self) -> int:
        """All-reduces whose message is tokens x hidden."""
        return self.per_layer + self.embedding


def allreduces_per_stage(layers: int, mamba1_layers: int, first_stage: bool, blocks_per_layer: int = 2) -> AllReduceCount:
    """The all-reduces of one stage's forward: 2 per layer (1 where a layer is one block: Nemotron-H's mixer or
    MLP alone), 1 more per Mamba-1 layer, 1 for the embedding."""
    return AllReduceCount(blocks_per_layer * layers, mamba1_layers, 1 if first_stage else 0)


def ring_allgather_seconds(total_bytes: int, ranks: int, link_gbps: float, latency_s: float, base_s: float = 0.0) -> float:
    """One ring all-gather of `total_bytes` (each rank contributing 1/N): `base_s` + (N-1) steps of latency + the
    (N-1)/N of it each rank receives over the link (NCCL's ring all-gather, the all-reduce's second half)."""
    if ranks <= 1:
        return 0.0
    return base_s + (ranks - 1) * latency_s + all_to_all_wire_bytes(total_bytes, ranks) / (link_gbps * 1e9)


def is_mamba1(spec) -> bool:
    """Whether the spec's state layers are Mamba-1 (Jamba): Mamba sizes without mamba_n_heads (Mamba-2), the
    linear_* sizes (Gated DeltaNet) or an opaque state_elements_per_layer (kvplan.model.kinds.State.tensors)."""
    return (getattr(spec, "mamba_d_state", None) is not None and getattr(spec, "mamba_n_heads", None) is None
            and getattr(spec, "linear_num_value_heads", None) is None
            and getattr(spec, "state_elements_per_layer", None) is None)


def mamba1_x_proj_width(spec) -> int:
    """Output columns of Mamba-1's x_proj, dt_rank + 2 d_state, whose partial sums the tp ranks all-reduce.
    dt_rank is Mamba's default ceil(hidden / 16) (mamba_ssm Mamba.__init__ "auto"; JambaConfig's
    mamba_dt_rank "auto", the value every published Jamba config gives): Jamba-v0.1 256 + 2 x 16 = 288."""
    return -(-spec.hidden_size // 16) + 2 * spec.mamba_d_state


def mamba2_norm_collective(spec, tp: int) -> str | None:
    """The collective vLLM 0.32's Mamba-2 gated RMSNorm (Mixer2RMSNormGated.forward_native, which forward_cuda
    takes whenever n_groups != 1 or tp does not divide it) runs per Mamba-2 layer and forward at `tp` ranks:
    "all_reduce" of each token's fp32 sum of squares (n_groups 1: the norm spans the split channels),
    "all_gather" of the fp32 gated activations, tokens x d_inner (tp does not divide n_groups: every rank
    normalises whole groups), None (tp divides n_groups, or tp 1, or no Mamba-2)."""
    if tp <= 1 or getattr(spec, "mamba_n_heads", None) is None or getattr(spec, "linear_num_value_heads", None) is not None:
        return None
    groups = spec.mamba_n_groups
    if groups == 1:
        return "all_reduce"
    return "all_gather" if groups % tp else None
