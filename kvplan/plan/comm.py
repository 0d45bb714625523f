"""Communication between tensor-parallel ranks and pipeline stages: pure, no torch, no I/O.

The model (the same in the planner and in `kvplan measure --tp`):

- a tensor-parallel layer sums its row-parallel outputs over the N ranks of its stage with one
  all-reduce after the attention (or state) mixer and one after the MLP (Megatron-LM's split, as
  vLLM's RowParallelLinear does); the input embedding is vocab-parallel, one more all-reduce per
  forward on the first stage; Mamba-1's x_proj is row-parallel, one more per state layer and token;
- the message of one all-reduce is the tokens x hidden activations in the model's dtype;
- a ring all-reduce sends and receives 2(N - 1)/N x the message per rank in 2(N - 1) steps (a
  reduce-scatter, then an all-gather: Patarasuk & Yuan 2009, the algorithm NCCL's ring uses), so it
  takes NCCL's base latency + 2(N - 1) x latency per step + 2(N - 1)/N x message / link bandwidth;
- a pipeline stage hands its hidden states (tokens x hidden x dtype) to the next over the same
  link: latency + bytes / bandwidth per boundary;
- pipeline bubbles: with pp stages and one micro-batch in flight (a decode step, a single prompt),
  a token passes the stages one after another, so the step is the sum of the stages (the idle
  stages are the bubble, (pp - 1)/pp of each GPU's time); `micro_batches` m > 1 lets the stages
  overlap: the step is then (m + pp - 1)/m x the slowest stage's share (GPipe's bubble,
  Huang et al. 2019).
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

    per_layer: int  # mixer + MLP: 2 for every layer
    extra_state: int  # Mamba-1 x_proj: one per such layer and token (the scan runs token by token)
    embedding: int  # 1 on the first stage (vocab-parallel embedding)

    @property
    def hidden_messages(self) -> int:
        """All-reduces whose message is tokens x hidden."""
        return self.per_layer + self.embedding


def allreduces_per_stage(layers: int, mamba1_layers: int, first_stage: bool) -> AllReduceCount:
    """The all-reduces of one stage's forward: 2 per layer, 1 more per Mamba-1 layer, 1 for the embedding."""
    return AllReduceCount(2 * layers, mamba1_layers, 1 if first_stage else 0)
