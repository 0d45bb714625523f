"""The plan's communication term (kvplan/plan/comm.py, Planner.stage_comm_s): hand-worked figures.

Ring all-reduce of M bytes over N ranks (Patarasuk & Yuan; NCCL's ring): each rank sends 2(N-1)/N x M in
2(N-1) steps. Time = NCCL baseLat 3.6 us (src/graph/tuning.cc, Ring/LL) + 2(N-1) x the link's latency per
step + the wire bytes / the link's bandwidth. The H100 SXM's catalog link: NVLink 4, 900 GB/s both ways =
450 GB/s per direction (NVIDIA H100 datasheet), 0.4 us a step (tuning.cc hwLat NVLink Ring/LL).
"""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli
from kvplan.plan.comm import allreduces_per_stage, ring_allreduce_seconds, ring_allreduce_wire_bytes, send_seconds


def test_ring_wire_bytes():
    assert ring_allreduce_wire_bytes(4096, 8) == 7168  # 2 x 7 x 4096 / 8
    assert ring_allreduce_wire_bytes(1000, 3) == 1334  # 4000 / 3 = 1333.3, rounded up to a whole byte
    assert ring_allreduce_wire_bytes(1000, 1) == 0


def test_ring_seconds():
    assert ring_allreduce_seconds(8192, 8, 450, 0.4e-6, 3.6e-6) == pytest.approx(3.6e-6 + 14 * 0.4e-6 + 14336 / 450e9, rel=1e-12)
    assert ring_allreduce_seconds(8192, 1, 450, 0.4e-6, 3.6e-6) == 0.0
    assert send_seconds(16384, 450, 0.4e-6) == pytest.approx(0.4e-6 + 16384 / 450e9, rel=1e-12)


def test_all_reduce_count():
    c = allreduces_per_stage(40, 0, True)
    assert (c.per_layer, c.embedding, c.hidden_messages) == (80, 1, 81)
    assert allreduces_per_stage(3, 2, False).extra_state == 2


def plan(capsys, *flags):
    r = run_cli(capsys, "estimate", "llama-3.1-70b", "--gpu", "h100-sxm", "--context", "8192", "-f", "json", *flags)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


# Llama-3.1-70B: 80 layers, hidden 8,192, bf16 activations: a decode step's message at batch 1 = 8,192 x 2 B
MESSAGE = 8192 * 2


def test_tp8_decode_step_adds_161_all_reduces(capsys):
    d = plan(capsys, "--tp", "8")
    per = 3.6e-6 + 14 * 0.4e-6 + (2 * 7 * MESSAGE // 8) / 450e9
    assert d["decode_comm_s"] == pytest.approx(161 * per, rel=1e-9)  # 2 x 80 layers + the embedding
    # the prefill's messages are the whole prompt's: 8,192 tokens (the default prompt: the context)
    big = 8192 * MESSAGE
    assert d["prefill_comm_s"] == pytest.approx(161 * (3.6e-6 + 14 * 0.4e-6 + (2 * 7 * big // 8) / 450e9), rel=1e-9)
    off = plan(capsys, "--tp", "8", "--no-communication")
    assert off["decode_comm_s"] is None and off["prefill_comm_s"] is None
    assert d["decode_step_s"] - off["decode_step_s"] == pytest.approx(d["decode_comm_s"], rel=1e-9)
    assert d["prefill_s"] - off["prefill_s"] == pytest.approx(d["prefill_comm_s"], rel=1e-9)
    assert d["assumptions"]["link_gbps"] == 450 and d["assumptions"]["link_latency_us"] == pytest.approx(0.4)
    assert any("communication left out: --no-communication" in n for n in off["notes"])


def test_tp4_pp2_adds_a_stage_hand_off_and_names_the_bubble(capsys):
    d = plan(capsys, "--tp", "4", "--pp", "2")
    ring = 3.6e-6 + 6 * 0.4e-6 + (2 * 3 * MESSAGE // 4) / 450e9
    # stages of 40 layers: 81 all-reduces on the first (the embedding), 80 on the second; one hand-off
    assert d["decode_comm_s"] == pytest.approx(161 * ring + 0.4e-6 + MESSAGE / 450e9, rel=1e-9)
    assert any("idles about 50%" in n for n in d["notes"])


def test_link_flags_override_the_catalog(capsys):
    d = plan(capsys, "--tp", "2", "--link-gbps", "32", "--link-latency-us", "1")
    per = 3.6e-6 + 2 * 1e-6 + (2 * 1 * MESSAGE // 2) / 32e9
    assert d["decode_comm_s"] == pytest.approx(161 * per, rel=1e-9)


def test_one_gpu_communicates_nothing(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h100-sxm", "-f", "json")
    d = json.loads(r.stdout)
    assert d["decode_comm_s"] == 0.0 and d["prefill_comm_s"] == 0.0


def test_a_gpu_without_a_link_figure_says_so(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "rtx-4090", "--tp", "2", "-f", "json")
    d = json.loads(r.stdout)
    assert d["decode_comm_s"] is None
    assert any("no interconnect figure for this GPU; give --link-gbps" in n for n in d["notes"])


def test_expert_parallel_swaps_the_moe_layers_all_reduce_for_two_all_to_alls(capsys):
    """DeepSeek-V3 (config.json: 61 layers, first_k_dense_replace 3 -> 58 MoE layers, hidden 7,168, 8 of 256
    routed experts a token) at tp 8 on an H200 (NVLink 4: 450 GB/s, 0.4 us a step). A decode step at batch 1:
    without --expert-parallel 2 x 61 + 1 = 123 all-reduces of 7,168 x 2 B; with it 123 - 58 all-reduces and
    2 x 58 all-to-alls of 8 x 7,168 x 2 B, each (N-1) = 7 steps and 7/8 of the message on the wire."""
    def run(*flags):
        r = run_cli(capsys, "estimate", "deepseek-v3", "--gpu", "h200", "--tp", "8", "--context", "8192", "-f", "json", *flags)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)

    message = 7168 * 2
    ring = 3.6e-6 + 14 * 0.4e-6 + (2 * 7 * message // 8) / 450e9
    a2a = 3.6e-6 + 7 * 0.4e-6 + (7 * 8 * message // 8) / 450e9
    tp, ep = run(), run("--expert-parallel")
    assert tp["decode_comm_s"] == pytest.approx(123 * ring, rel=1e-9)
    assert ep["decode_comm_s"] == pytest.approx(65 * ring + 116 * a2a, rel=1e-9)
    assert ep["weights_bytes_per_gpu"] == tp["weights_bytes_per_gpu"]  # 256 experts / 8 whole = 1/8 of each
    assert "expert_parallel" in ep["assumptions"]


def test_expert_parallel_refusals(capsys):
    r = run_cli(capsys, "estimate", "llama-3.1-8b", "--gpu", "h200", "--tp", "2", "--expert-parallel")
    assert r.exit_code == 2 and "--expert-parallel: llama-3.1-8b has no routed experts; drop the flag" in r.stderr
    r = run_cli(capsys, "estimate", "deepseek-v3", "--gpu", "h200", "--tp", "3", "--expert-parallel")
    assert r.exit_code == 2


def test_mamba1_x_proj_adds_one_all_reduce_per_state_layer(capsys):
    """Jamba-v0.1 (config.json: 32 layers, 4 attention + 28 Mamba-1, hidden 4,096, d_state 16, mamba_dt_rank
    "auto" = ceil(4,096 / 16) = 256) at tp 2 on an H100 SXM (450 GB/s, 0.4 us a step). vLLM 0.32's MambaMixer
    makes x_proj a RowParallelLinear(d_inner, dt_rank + 2 x d_state) whose output is all-reduced, once per
    forward (_ssm_transform over all of a step's decode tokens): 28 more all-reduces of 288 x 2 B a token,
    beside the 2 x 32 + 1 = 65 of tokens x 4,096 x 2 B."""
    r = run_cli(capsys, "estimate", "jamba-v0.1", "--gpu", "h100-sxm", "--tp", "2", "--context", "8192", "-f", "json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)

    def ring(message):  # 2 ranks: 2 steps, 2 x 1 / 2 = the whole message on the wire
        return 3.6e-6 + 2 * 0.4e-6 + message / 450e9

    assert d["decode_comm_s"] == pytest.approx(65 * ring(4096 * 2) + 28 * ring(288 * 2), rel=1e-12)
    prompt = 8192  # the prefill: the whole prompt in one forward, so 28 x_proj all-reduces again, not 28 a token
    assert d["prefill_comm_s"] == pytest.approx(65 * ring(prompt * 4096 * 2) + 28 * ring(prompt * 288 * 2), rel=1e-12)


def test_mamba2_and_gated_deltanet_add_no_x_proj_all_reduce():
    """Mamba-2's in_proj is column-parallel and emits dt, B, C per rank (vLLM 0.32 MambaMixer2: no x_proj);
    Gated DeltaNet's in_proj_qkvz / in_proj_ba likewise (Qwen3NextGatedDeltaNet): only out_proj reduces."""
    from kvplan.plan.comm import is_mamba1
    from kvplan.sources.catalog import resolve_spec as load

    assert is_mamba1(load("jamba-v0.1"))
    assert not any(is_mamba1(load(name)) for name in ("nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b", "llama-3.1-8b"))


def _nemotron(capsys, tp, model="nemotron-3-nano-30b-a3b"):
    r = run_cli(capsys, "estimate", model, "--gpu", "h100-sxm", "--tp", str(tp), "--context", "8192", "-f", "json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_nemotron_h_layers_are_one_block_one_all_reduce(capsys):
    """Nemotron-3-Nano (config.json hybrid_override_pattern: 52 layers, 23 Mamba-2 + 6 attention + 23 MoE, each
    layer one block; hidden 2,688; n_groups 8) at tp 2 on an H100 SXM: vLLM 0.32 nemotron_h.py gives each
    NemotronH*DecoderLayer one mixer (MambaMixer2, NemotronHAttention's o_proj, NemotronHMLP / NemotronHMoE) and
    so one all-reduce, not a mixer's and an MLP's: 52 + 1 (embedding) = 53 of tokens x 2,688 x 2 B; tp 2 divides
    the 8 groups, so the gated norm runs per rank (no collective)."""
    d = _nemotron(capsys, 2)
    ring = 3.6e-6 + 2 * 0.4e-6 + 2688 * 2 / 450e9  # 2 ranks: 2 steps, the whole message on the wire
    assert d["decode_comm_s"] == pytest.approx(53 * ring, rel=1e-12)


def test_mamba2_gated_norm_gathers_when_tp_does_not_divide_the_groups(capsys):
    """At tp 16 the 8 groups do not divide (Mixer2RMSNormGated.forward_native, redundant_tp): each of the 23
    Mamba-2 layers all-gathers the fp32 gated activations, tokens x d_inner 4,096 x 4 B, in 15 ring steps with
    15/16 of them received; beside 53 all-reduces of 2,688 x 2 B over 16 ranks (30 steps, 30/16 on the wire)."""
    d = _nemotron(capsys, 16)
    ring = 3.6e-6 + 30 * 0.4e-6 + (30 * 2688 * 2 // 16) / 450e9
    gather = 3.6e-6 + 15 * 0.4e-6 + (15 * 4096 * 4 // 16) / 450e9
    assert d["decode_comm_s"] == pytest.approx(53 * ring + 23 * gather, rel=1e-12)


def test_mamba2_one_group_all_reduces_the_norm_sums(capsys, tmp_path):
    """n_groups 1 (Mamba-2's own configs): the gated norm spans the split channels, so each rank's fp32 sum of
    squares is all-reduced, 4 B a token, once per Mamba-2 layer and forward (Mixer2RMSNormGated: n_groups == 1)."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "model_specs" / "nemotron-3-nano-30b-a3b.yaml").read_text()
    spec = tmp_path / "one-group.yaml"
    spec.write_text(text.replace("name: nemotron-3-nano-30b-a3b", "name: one-group").replace("mamba_n_groups: 8", "mamba_n_groups: 1"))
    d = _nemotron(capsys, 2, str(spec))
    ring = 3.6e-6 + 2 * 0.4e-6 + 2688 * 2 / 450e9
    assert d["decode_comm_s"] == pytest.approx(53 * ring + 23 * (3.6e-6 + 2 * 0.4e-6 + 4 / 450e9), rel=1e-12)
