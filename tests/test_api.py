"""The Python API (`import kvplan`): the same answers as the CLI, as frozen objects whose to_dict() is its JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import kvplan
from kvplan.cli.render import to_json
from kvplan.errors import InputError

from cli_helpers import run_cli

CASES = [
    # (kvplan.estimate keywords, the same question on the command line)
    (dict(model="llama-3.1-8b", context=32768, batch=16), ["llama-3.1-8b", "-c", "32768", "-b", "16"]),
    (dict(model="gemma-3-27b", context=8192, batch=4, engine="ideal"),
     ["gemma-3-27b", "-c", "8192", "-b", "4", "--engine", "ideal"]),
    (dict(model="llama-3.1-70b", context=32768, batch=8, gpu="h200", tp=2, kv_cache_dtype="fp8"),
     ["llama-3.1-70b", "-c", "32768", "-b", "8", "--gpu", "h200", "--tp", "2", "--kv-cache-dtype", "fp8"]),
    (dict(model="gpt-oss-20b", context=16384, gpu="h100-sxm", requests_per_s=2.0, output_tokens=512),
     ["gpt-oss-20b", "-c", "16384", "--gpu", "h100-sxm", "--requests-per-s", "2", "--output-tokens", "512"]),
    (dict(model="gemma-3-27b", context=8192, engine="llama.cpp", parallel=2, gpu="h100-sxm"),
     ["gemma-3-27b", "-c", "8192", "--engine", "llama.cpp", "--parallel", "2", "--gpu", "h100-sxm"]),
    (dict(model="llama-3.1-8b", context=4096, batch=2, engine="hf", hf_cache="static"),
     ["llama-3.1-8b", "-c", "4096", "-b", "2", "--engine", "hf", "--hf-cache", "static"]),
    (dict(model="gpt-oss-20b", context=32768, batch=4, engine="sglang", gpu="h100-sxm"),
     ["gpt-oss-20b", "-c", "32768", "-b", "4", "--engine", "sglang", "--gpu", "h100-sxm"]),
]


@pytest.mark.parametrize("kwargs,argv", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_estimate_to_dict_is_the_cli_json(capsys, kwargs, argv):
    kwargs = dict(kwargs)
    answer = kvplan.estimate(kwargs.pop("model"), **kwargs)
    r = run_cli(capsys, "estimate", *argv, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert to_json(answer.to_dict()) + "\n" == r.stdout


@pytest.mark.parametrize("kwargs,argv", [
    (dict(context=32768, batch=8, gpu="h100-sxm"), ["-c", "32k", "-b", "8", "--gpu", "h100-sxm"]),
    (dict(context=8192, engines=["ideal", "llama.cpp"], kv_cache_dtype="q8_0", ubatch_size=256),
     ["-c", "8k", "--engines", "ideal,llama.cpp", "--kv-cache-dtype", "q8_0", "--ubatch-size", "256"]),
    (dict(context=16384, gpu_memory="24GiB"), ["-c", "16k", "--gpu-memory", "24GiB"]),
])
def test_compare_to_dict_is_the_cli_json(capsys, kwargs, argv):
    comparison = kvplan.compare("gemma-3-27b", **kwargs)
    r = run_cli(capsys, "compare", "gemma-3-27b", *argv, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert to_json(comparison.to_dict()) + "\n" == r.stdout


def test_answers_are_frozen_and_carry_the_engine_objects():
    answer = kvplan.estimate("llama-3.1-8b", context=8192, batch=2, engine="trtllm", gpu="h100-sxm")
    with pytest.raises(AttributeError):  # immutable
        answer.context = 1  # type: ignore[misc]
    # 8,192 tokens x 2 sequences x 131,072 B (32 layers x 8 KV heads x 128 x 2 x 2 B): 32 tokens divide 8,192
    assert answer.cache.kv_bytes_total == 2 * 8192 * 131_072
    assert answer.capacity.engine == "trtllm" and answer.plan is None
    vllm = kvplan.estimate("llama-3.1-8b", context=8192, batch=2, gpu="h100-sxm")
    assert vllm.plan.max_concurrent_sequences == vllm.to_dict()["max_concurrent_sequences"]


def test_load_model_reads_every_source_the_cli_takes():
    spec = kvplan.load_model("llama-3.1-8b")
    assert (spec.num_hidden_layers, spec.num_key_value_heads) == (32, 8)  # Llama-3.1-8B's config.json
    assert kvplan.load_model(spec) is spec
    same = kvplan.estimate(spec, context=1000).to_dict()
    assert same == kvplan.estimate("llama-3.1-8b", context=1000).to_dict()


def test_bad_input_raises_with_the_cli_words():
    with pytest.raises(InputError, match="--engine 'vllm2' is not one of vllm, ideal, hf"):
        kvplan.estimate("llama-3.1-8b", engine="vllm2")
    with pytest.raises(InputError, match="'parallel' is llama.cpp's|--parallel"):
        kvplan.estimate("llama-3.1-8b", engine="vllm", parallel=2)
    with pytest.raises(InputError, match="'contxt' is not an option"):
        kvplan.estimate("llama-3.1-8b", contxt=5)


def test_import_kvplan_loads_the_api_lazily():
    code = ("import sys, kvplan\n"
            "assert 'kvplan.api' not in sys.modules and 'kvplan.plan.pipeline' not in sys.modules\n"
            "kvplan.estimate\n"
            "assert 'kvplan.api' in sys.modules\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError):
        kvplan.no_such_thing  # noqa: B018


def test_the_package_is_typed():
    assert (Path(kvplan.__file__).parent / "py.typed").is_file()  # PEP 561; hatch ships every file of the package


def test_the_docs_api_example_gives_the_output_it_shows():
    """The docs' Python API example (docs/api.md), run as a doctest: every output line it shows is what kvplan prints."""
    import doctest

    readme = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    section = readme.split("## Python API", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    test = doctest.DocTestParser().get_doctest(example, {}, "docs Python API", "docs/api.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert len(test.examples) >= 8
