"""kvplan/plan/pipeline.py: a question names a GPU when any GPU setting is given, all of them included.

Found by `python tools/mutate.py kvplan/plan/pipeline.py --sample 15 --seed 1` (docs/mutation.md):
`Settings.has_gpu` read as "some GPU setting is missing" passed every test, because every test that
gives a GPU leaves at least one of the five GPU settings out.
"""

from __future__ import annotations

import pytest

from kvplan.plan.pipeline import Settings, run
from kvplan.sources.catalog import resolve_spec

EVERY_GPU_SETTING = {"gpu": "H100", "gpu_memory": "80GB", "gpu_bandwidth": 3350.0, "usd_per_hour": 2.0,
                     "gpu_bf16_tflops": 989.0}


@pytest.mark.parametrize("given, want", [
    ({}, False),  # a KV-only question
    ({"gpu": "H100"}, True),
    ({"gpu_memory": "80GB", "gpu_bandwidth": 3350.0}, True),  # a GPU described by its figures alone
    ({"usd_per_hour": 2.0}, True),
    (EVERY_GPU_SETTING, True),
])
def test_has_gpu_is_any_gpu_setting_given(given, want):
    assert Settings(**given).has_gpu is want


def test_every_gpu_setting_given_still_sizes_capacity_on_that_gpu():
    answer = run(resolve_spec("llama-3.1-8b"), "vllm", Settings(**EVERY_GPU_SETTING))
    assert answer.capacity is not None and answer.plan is not None
    assert answer.capacity.gpu_memory_bytes == 80 * 10**9  # --gpu-memory 80GB: GB = 10**9 (kvplan/units.py)


def test_estimate_refuses_an_engine_it_does_not_know_by_name():
    # check_estimate's own refusal (the CLI's typer choice refuses first; the Python API reaches this one)
    from kvplan.errors import InputError
    from kvplan.plan.pipeline import check_estimate

    with pytest.raises(InputError) as err:
        check_estimate(resolve_spec("llama-3.1-8b"), "vlm", Settings(), contexts=[8192], tps=[1],
                       kv_cache_dtypes=["auto"])
    assert err.value.message == "--engine 'vlm' is not one of vllm, ideal, hf, llama.cpp, sglang, trtllm"


def test_a_comparison_of_no_engine_still_names_its_gpu():
    # no row to take the GPU's name from: the comparison names it from the settings, as a row would
    # ("h100-sxm": model_specs' GPU catalog name for H100, kvplan/plan/gpus.py)
    import kvplan

    got = kvplan.compare("llama-3.1-8b", engines=[], gpu="H100").to_dict()
    assert (got["gpu"], got["rows"]) == ("h100-sxm", [])
    assert kvplan.compare("llama-3.1-8b", engines=["ideal"], gpu="H100").to_dict()["gpu"] == "h100-sxm"


@pytest.mark.parametrize("engine", ["vllm", "llama.cpp"])
def test_estimate_refuses_an_option_no_engine_has_by_name(engine):
    # a misspelt engine option (llama.cpp's is ubatch_size) is refused, never ignored (README "Engines")
    from kvplan.errors import InputError
    from kvplan.plan.pipeline import check_estimate

    with pytest.raises(InputError) as err:
        check_estimate(resolve_spec("llama-3.1-8b"), engine, Settings(engine_options={"ubatch": 512}),
                       contexts=[8192], tps=[1], kv_cache_dtypes=["auto"])
    assert err.value.message.startswith("'ubatch' is no engine's option (one of ")
    assert "ubatch_size" in err.value.message.split("(one of ")[1].rstrip(")").split(", ")
