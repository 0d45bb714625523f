"""`kvplan measure --tp N [--pp M]` for real: N x M ranks spawned under torch.distributed (gloo, CPU).

Every expected figure is worked by hand below from vLLM's per-rank rules (vllm 0.32.0):
`ModelConfig.get_num_kv_heads` (max(1, kv heads // tp): a KV head replicated when kv < tp), the MLA
latent whole on every rank (`MLAAttentionSpec`: kv_lora_rank + qk_rope_head_dim, one "head"),
`mamba_utils.MambaStateShapeCalculator.mamba1_state_shape` / `mamba2_state_shape` (channels split;
Mamba-2 groups replicated to tp when n_groups % tp, `extra_groups_for_head_shards`), `get_pp_indices`
(3 layers over 2 stages -> 2, 1). Dims are tiny (hidden 64) and fp32, so a run takes seconds, and a
cache holds context 8 + 2 decode steps = T = 10 tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

from conftest import make_spec  # noqa: E402
from kvplan.errors import InputError  # noqa: E402
from kvplan.measure.parallel import ParallelOptions, measure_parallel  # noqa: E402
from kvplan.measure.run import MeasureOptions  # noqa: E402

T = 10  # tokens held: --context 8 + 2 decode steps
F32 = 4
HIDDEN = 64
MESSAGE = HIDDEN * F32  # one all-reduce of one token's hidden state, batch 1: 256 B

GQA = dict(num_hidden_layers=2, torch_dtype="float32")  # 4 heads of 16, 2 KV heads
MLA = dict(GQA, num_key_value_heads=None, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, q_lora_rank=24)
MAMBA1 = dict(GQA, layer_types=["mamba", "full_attention"], mamba_d_state=8, mamba_d_conv=4, mamba_expand=2)
MAMBA2 = dict(MAMBA1, mamba_n_heads=8, mamba_n_groups=1)  # d_inner 128 = 8 heads x 16


def kv_layer(heads: int, head_dim: int) -> int:
    """K + V of one layer on one rank: 2 x heads x T x head_dim x 4 bytes."""
    return 2 * heads * T * head_dim * F32


# (fields, tp, per-rank bytes, the stage's replication bytes = tp x rank - one copy, all-reduces / step,
#  all-reduce message bytes / step)
CASES = {
    # 2 KV heads over 2 ranks: one each, nothing replicated
    "gqa-kv2-tp2": (GQA, 2, 2 * kv_layer(1, 16), 0, 5, 5 * MESSAGE),
    # 8 heads of 8, 4 KV heads over 4 ranks: one each
    "gqa-kv4-tp4": (dict(GQA, num_attention_heads=8, num_key_value_heads=4), 4, 2 * kv_layer(1, 8), 0, 5, 5 * MESSAGE),
    # 1 KV head, 2 ranks: both hold it (one copy = 2 x kv_layer(1, 16))
    "gqa-kv1-tp2": (dict(GQA, num_key_value_heads=1), 2, 2 * kv_layer(1, 16), 2 * 2 * kv_layer(1, 16) - 2 * kv_layer(1, 16), 5, 5 * MESSAGE),
    # 2 KV heads, 4 ranks: each holds one, each head twice (one copy = 2 layers x kv_layer(2, 16))
    "gqa-kv2-tp4": (dict(GQA, num_key_value_heads=2), 4, 2 * kv_layer(1, 16), 4 * 2 * kv_layer(1, 16) - 2 * kv_layer(2, 16), 5, 5 * MESSAGE),
    # the 40-element latent whole on every rank: 2 layers x 40 x T x 4
    "mla-tp2": (MLA, 2, 2 * 40 * T * F32, (2 - 1) * 2 * 40 * T * F32, 5, 5 * MESSAGE),
    "mla-tp4": (MLA, 4, 2 * 40 * T * F32, (4 - 1) * 2 * 40 * T * F32, 5, 5 * MESSAGE),
    # Mamba-1 d_inner 128 / 2 = 64 channels: conv (64, 3) + ssm (64, 8) fp32 = 2,816; + one attention layer.
    # x_proj is row-parallel: one more all-reduce per Mamba-1 layer, of dt_rank 4 + 2 x d_state 8 fp32 = 80 B
    "mamba1-tp2": (MAMBA1, 2, (64 * 3 + 64 * 8) * F32 + kv_layer(1, 16), 0, 6, 5 * MESSAGE + 80),
    # Mamba-2 at tp 4: 1 group replicated to 4, one a rank: conv (128/4 + 2 x 1 x 8 = 48, 3), ssm (8/4, 16, 8);
    # the attention layer's 2 KV heads replicated to 4 ranks. One copy: conv (128 + 16, 3), ssm (8, 16, 8)
    # = 5,824 B, attention kv_layer(2, 16) = 2,560 B
    "mamba2-tp4": (
        MAMBA2, 4, (48 * 3 + 2 * 16 * 8) * F32 + kv_layer(1, 16),
        4 * ((48 * 3 + 2 * 16 * 8) * F32 + kv_layer(1, 16)) - ((144 * 3 + 8 * 16 * 8) * F32 + kv_layer(2, 16)), 5, 5 * MESSAGE,
    ),
}


def write_spec(path: str, fields: dict) -> None:
    import yaml

    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(json.loads(make_spec(**fields).model_dump_json(exclude_none=True)), f)


def run(fields: dict, tp: int, pp: int = 1, **kw):
    opts = MeasureOptions(spec=make_spec(**fields), contexts=(8,), decode_steps=2, warmup_steps=0, verify=True,
                          device="cpu", **kw)
    return measure_parallel(opts, ParallelOptions(tp=tp, pp=pp, timeout_s=300))


@pytest.mark.parametrize("case", list(CASES))
def test_per_rank_cache_bytes_and_all_reduces_match_the_hand_figures(case):
    fields, tp, rank_bytes, replication, allreduces, message_bytes = CASES[case]
    report = run(fields, tp)
    assert report.ranks == tp and len(report.runs) == tp
    for r in report.runs:
        assert r.measured_kv_bytes == rank_bytes, (case, r.rank)
        assert r.predicted_kv_bytes == rank_bytes, (case, r.rank)
        assert r.stage_replication_bytes == replication
        assert (r.allreduces_per_step, r.predicted_allreduces_per_step) == (allreduces, allreduces)
        assert (r.allreduce_bytes_per_step, r.predicted_allreduce_bytes_per_step) == (message_bytes, message_bytes)
        # ring: 2(N-1)/N of each message on the wire
        assert r.predicted_allreduce_wire_bytes_per_step == sum(
            -(-2 * (tp - 1) * m // tp) for m in [MESSAGE] * 5 + [80] * (allreduces - 5))
        assert r.allreduce_s_per_step > 0 and r.predicted_allreduce_s_per_step > 0
    # cached decode == recomputation, and the sharded model == the one-process decoder (fp32: to rounding)
    assert report.verify_ok is True
    assert report.verify_max_abs_logit_diff < 1e-4 and report.one_process_max_abs_logit_diff < 1e-4


def test_two_pipeline_stages_over_two_tensor_parallel_ranks(capsys):
    """--tp 2 --pp 2 through the CLI: 3 layers split 2, 1 (get_pp_indices); each stage's ranks hold their
    layers' cache; stage 0 sends one token's hidden state (256 B) a step to stage 1."""
    from cli_helpers import run_cli

    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kvplan-tp-{os.getpid()}.yaml")
    write_spec(path, dict(GQA, num_hidden_layers=3))
    try:
        result = run_cli(capsys, "measure", path, "--tp", "2", "--pp", "2", "--context", "8", "--decode-steps", "2",
                         "--warmup-steps", "0", "--device", "cpu", "--verify", "--format", "json")
    finally:
        os.unlink(path)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["layers_per_stage"] == [2, 1] and data["ranks"] == 4 and data["verify_ok"] is True
    by_rank = {r["rank"]: r for r in data["runs"]}
    for rank, (stage, layers, first, allreduces, p2p) in {
        0: (0, 2, 0, 5, MESSAGE), 1: (0, 2, 0, 5, MESSAGE), 2: (1, 1, 2, 2, 0), 3: (1, 1, 2, 2, 0),
    }.items():
        r = by_rank[rank]
        assert (r["stage"], r["layers"], r["first_layer"]) == (stage, layers, first)
        assert r["measured_kv_bytes"] == r["predicted_kv_bytes"] == layers * kv_layer(1, 16)
        assert r["allreduces_per_step"] == allreduces and r["allreduce_bytes_per_step"] == allreduces * MESSAGE
        assert r["p2p_bytes_per_step"] == r["predicted_p2p_bytes_per_step"] == p2p


def test_a_killed_rank_ends_the_command_within_its_timeout_naming_the_rank(tmp_path):
    """Rank 1 kills itself (SIGKILL) after its prefill: rank 0 is left in an all-reduce; the command must
    stop both and exit 1 naming rank 1, well within --timeout."""
    spec = tmp_path / "tiny.yaml"
    write_spec(str(spec), GQA)
    timeout = 240
    env = dict(os.environ, KVPLAN_MEASURE_FAULT="kill:1")
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kvplan", "measure", str(spec), "--tp", "2", "--context", "8", "--decode-steps", "2",
         "--device", "cpu", "--timeout", str(timeout)],
        capture_output=True, text=True, env=env, timeout=timeout + 60,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert elapsed < timeout
    last = proc.stderr.strip().splitlines()[-1]
    assert "rank 1 (stage 0, tp rank 1) was killed by SIGKILL" in last
    assert "all ranks were stopped" in last and "Traceback" not in proc.stderr


def test_a_model_that_cannot_shard_is_refused_before_any_rank_starts():
    with pytest.raises(InputError, match="--tensor-parallel-size 3 does not divide tiny's 4 attention heads"):
        run(GQA, 3)


def test_under_torchrun_each_process_is_one_rank_and_rank_0_prints(tmp_path):
    """torchrun sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT: kvplan joins by env:// instead of spawning;
    rank 0 prints every rank's readings (one JSON document), the other rank nothing."""
    spec = tmp_path / "tiny.yaml"
    write_spec(str(spec), GQA)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--master-addr",
         "127.0.0.1", "--master-port", str(port), "-m", "kvplan", "measure", str(spec), "--tp", "2", "--context", "8",
         "--decode-steps", "2", "--warmup-steps", "0", "--device", "cpu", "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["launch"] == "torchrun" and data["ranks"] == 2
    assert [(r["rank"], r["measured_kv_bytes"]) for r in data["runs"]] == [(0, 2 * kv_layer(1, 16)), (1, 2 * kv_layer(1, 16))]
