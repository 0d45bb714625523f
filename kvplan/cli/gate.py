"""`kvplan check PLAN` and `kvplan diff OLD NEW`: capacity and cost gates for CI.

check: evaluate every deployment of a plan file against its budgets; exit 0 when
all pass, 1 when any fails, 2 for an invalid plan (one `file:line: key: message`
line per problem). diff: KV bytes and capacity of two specs (or one spec at a git
revision against the working tree) with deltas; `--fail-on-increase PCT` gates.
Both take `engine: hf|llama.cpp|sglang|trtllm` (`--engine` for diff) with that
engine's own options: capacity, headroom and max context then follow the
engine's rules (`gating.answer_figures`, as for vllm). torch is never imported.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer

from kvplan.cli.options import O, engine_flags, flag_group, tees_output
from kvplan.options import BUDGET, PLANNER_KEYS, WEIGHTS, given_engine_options, one_value, one_word, parse_option, read_group
from kvplan.errors import InputError

if TYPE_CHECKING:
    from kvplan.plan.gating import CheckReport


class CheckFormat(str, Enum):
    table = "table"
    json = "json"
    junit = "junit"
    markdown = "markdown"
    github = "github"


class DiffFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


def _diff_inputs(params: dict):
    """What `diff` reads, never to be replaced by its -o: both specs and a --gpu file."""
    from kvplan.cli.outputs import file_inputs, model_inputs

    for ref in (params["old"], params.get("new")):
        if ref is not None:
            yield from model_inputs(ref, "compared")
    yield from file_inputs([params.get("gpu")], "the --gpu file")


def register(app: typer.Typer) -> None:
    """Add `check` and `diff` to the kvplan app."""
    app.command(name="check")(check)
    app.command(name="diff")(tees_output(_diff_inputs)(diff))


# ================================================================== check


def check(
    plan: Annotated[str, typer.Argument(metavar="PLAN", help="A plan file (YAML): deployments with budgets.", show_default=False)],
    fmt: Annotated[
        CheckFormat,
        typer.Option("--format", "-f", help="table; json; junit (JUnit XML); markdown (a review comment); github (workflow annotations)."),
    ] = CheckFormat.table,
    output: O.output = None,
    force: O.force = False,
) -> None:
    """Check every deployment of PLAN against its budgets: exit 0 all pass, 1 any fails, 2 invalid plan."""
    from kvplan.cli import report_formats

    if output is not None:  # before any work: a report must never replace the plan, or a file the user wrote
        from kvplan.cli.outputs import check_output

        check_output(output, "--output", _output_kind(fmt), inputs=_plan_inputs(Path(plan)), force=force)
    try:
        report = run_check(Path(plan), plan)
    except InputError as exc:
        if fmt is CheckFormat.github:  # the plan's problems as annotations on their lines, too
            sys.stdout.write(report_formats.github_problems(exc.message, plan))
        if output is not None:  # an earlier report must not stand for a plan that no longer checks
            _write_atomically(output, report_formats.invalid_plan_report(fmt.value, plan, exc.message))
            sys.stderr.write(f"wrote {output} (invalid plan)\n")
        raise
    if output is not None:
        _write_atomically(output, _render_check(report, fmt, for_file=True))
        sys.stdout.write(_render_check(report, CheckFormat.table, for_file=False))
        sys.stderr.write(f"wrote {output}\n")
    else:
        sys.stdout.write(_render_check(report, fmt, for_file=False))
    if not report.passed:
        sys.stderr.write(f"kvplan check: {report_formats.summary(report)}\n")
        sys.exit(1)


def _output_kind(fmt: CheckFormat):
    """What an existing --output file must be to be replaced without --force (kvplan.cli.outputs)."""
    from kvplan.cli import outputs

    return {
        CheckFormat.table: outputs.CHECK_TABLE,
        CheckFormat.json: outputs.CHECK_JSON,
        CheckFormat.junit: outputs.JUNIT,
        CheckFormat.markdown: outputs.CHECK_MARKDOWN,
        CheckFormat.github: outputs.CHECK_GITHUB,
    }[fmt]


def _plan_inputs(path: Path):
    """The files a plan reads: itself, and the specs, GPU files and calibration reports its deployments name.

    A generator: `check_output` reads it only when --output names an existing file. Best effort,
    before the plan is validated: what cannot be read here, `run_check` reports.
    """
    from kvplan.cli.outputs import file_inputs, model_inputs

    yield str(path), "the plan being checked"
    try:
        from kvplan.sources.catalog import read_yaml

        data, _ = read_yaml(path)
    except InputError:
        return
    entries = data.get("deployments") if isinstance(data, dict) else None
    base = path.parent
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        model, gpu, calibration = (entry.get(k) for k in ("model", "gpu", "calibration"))
        if isinstance(model, str):
            yield from model_inputs(_rebase(model, base), "checked by this plan")
        yield from file_inputs([_rebase(v, base) for v in (gpu, calibration) if isinstance(v, str)], "a file this plan reads")


def _render_check(report, fmt: CheckFormat, for_file: bool) -> str:
    from kvplan.cli import report_formats

    if fmt is CheckFormat.json:
        return report_formats.to_json(report) + "\n"
    if fmt is CheckFormat.junit:
        return report_formats.to_junit(report)
    if fmt is CheckFormat.markdown:
        return report_formats.to_markdown(report)
    if fmt is CheckFormat.github:
        return report_formats.to_github(report)
    return _check_table(report, plain=for_file)


def _check_table(report: CheckReport, plain: bool) -> str:
    """The rich table as text: one line per budget, a rule between deployments (colour only on a terminal).

    A row per budget, not one per deployment with its budgets as lines of one cell:
    in a narrow console a wrapped cell would move a value beside another budget.
    """
    from rich.console import Console
    from rich.text import Text

    from kvplan.cli import report_formats
    from kvplan.plan.gating import format_value
    from kvplan.cli.render import FittedTable, output_width, print_text

    buffer = io.StringIO()
    tty = not plain and sys.stdout.isatty()
    # $COLUMNS, else the terminal's width, else kvplan.cli.render.PIPED_WIDTH (CI logs, files)
    out = Console(file=buffer, highlight=False, soft_wrap=False, width=output_width(), force_terminal=tty, no_color=not tty)
    rows, ends = [], set()
    notes = []
    how: dict[str, list[str]] = {}  # how an engine profile's figure was computed -> the figures so computed
    for d in report.deployments:
        for j, b in enumerate(d.budgets):
            result = Text("PASS", style="green") if b.passed else Text("FAIL", style="bold red")
            rows.append([d.name if j == 0 else "", b.budget, format_value(b.value, b.unit),
                         f"{b.comparison} {format_value(b.limit, b.unit)}", result])
            if b.value is None:
                notes.append(f"{d.name}: {b.metric} is absent: {b.note}")
            elif b.note and b.metric not in how.setdefault(b.note, []):  # one line per engine, not per deployment
                how[b.note].append(b.metric)
        ends.add(len(rows) - 1)
    justify = ["right" if i in (2, 3) else "left" for i in range(len(report_formats.HEADERS))]
    out.print(FittedTable(f"kvplan check {report.plan}", report_formats.HEADERS, rows, justify, section_ends=ends))
    for note in dict.fromkeys(notes):  # wrapped between words, further lines under the first word
        print_text(out, f"— {note}", indent=2)
    for note, metrics in how.items():
        print_text(out, f"— {', '.join(metrics)}: {note}", indent=2)
    print_text(out, report_formats.summary(report))
    return buffer.getvalue()


# ------------------------------------------------------------------ running a plan


def run_check(path: Path, where: str) -> CheckReport:
    """Read, validate and evaluate a plan file; every problem is an InputError naming its line."""
    from pydantic import ValidationError

    from kvplan.sources.catalog import format_validation_error, read_yaml
    from kvplan.plan.gating import CheckReport, PlanFile, duplicate_labels, engine_key_problems, plan_labels

    data, line_of = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with a `deployments:` list at the top level")
    try:
        plan = PlanFile.model_validate(data)
    except ValidationError as exc:
        raise InputError(_by_line(_plain(format_validation_error(exc, where, line_of, list(data), PlanFile)))) from None
    problems = []
    for i, first, label in duplicate_labels(plan):
        loc = ("deployments", i, "name")
        problems.append(
            f"{where}:{line_of(loc)}: deployments.{i}.name: {label!r} is already the name of "
            f"deployments.{first} (line {line_of(('deployments', first))}); give each deployment a unique `name`"
        )
    misplaced = set()
    for i, entry in enumerate(plan.deployments):
        for key, message in engine_key_problems(entry):
            loc = ("deployments", i, key)
            problems.append(f"{where}:{line_of(loc)}: deployments.{i}.{key}: {message}")
            misplaced.add(i)
    base = path.parent
    specs: dict[str, object] = {}
    results = []
    labels = plan_labels(plan)
    for i, entry in enumerate(plan.deployments):
        if i in misplaced:
            continue
        try:
            results.append(_evaluate(i, entry, labels[i], base, line_of, specs))
        except _EntryError as exc:
            loc = ("deployments", i, *exc.keys)
            problems.append(f"{where}:{line_of(loc)}: {'.'.join(str(p) for p in loc)}: {exc.message}")
    if problems:
        raise InputError(_by_line("\n".join(problems)))
    return CheckReport(where, tuple(results))


# pydantic's wording for a wrong shape, in the plan's terms
_PLAIN = {
    "Input should be a valid dictionary or instance of DeploymentEntry": "expected a mapping of deployment keys (model, gpu, context, budgets, ...)",
    "Input should be a valid dictionary or instance of Budgets": "expected a mapping of budget keys (min_concurrent_sequences, ...)",
    "Input should be a valid tuple": "expected a list of deployments",
}


def _plain(text: str) -> str:
    for theirs, ours in _PLAIN.items():
        text = text.replace(theirs, ours)
    return text


def _by_line(text: str) -> str:
    """Problems in file order: 'plan.yaml:12: ...' lines sorted by their line number (stable)."""
    def line(entry: str) -> tuple[int, int]:
        match = re.match(r"^.*?:(\d+): ", entry)
        return (0, int(match.group(1))) if match else (1, 0)  # a missing key has no line: last

    return "\n".join(sorted(text.split("\n"), key=line))


class _EntryError(Exception):
    """A problem with one plan entry: the key path under the entry and a message."""

    def __init__(self, keys: tuple, message: str) -> None:
        super().__init__(message)
        self.keys, self.message = keys, message


# estimate's flags as plan keys, so a message from shared code names what the plan says.
_FLAG_KEYS = {"--tensor-parallel-size": "tp", "--pipeline-parallel-size": "pp", "--mfu": "compute_efficiency"}
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def _as_entry_error(message: str, default_keys: tuple = ()) -> _EntryError:
    """Rewrite '--flag' as 'key' and point at the first key the message names."""
    from kvplan.plan.gating import DeploymentEntry

    def key(flag: str) -> str:
        return _FLAG_KEYS.get(flag, flag[2:].replace("-", "_"))

    keys = [key(f) for f in _FLAG.findall(message)]
    # only flags that are plan keys are rewritten: a command quoted in the message keeps its flags
    text = _FLAG.sub(lambda m: key(m.group(0)) if key(m.group(0)) in DeploymentEntry.model_fields else m.group(0), message)
    named = [k for k in keys if k in DeploymentEntry.model_fields]
    return _EntryError((named[0],) if named else default_keys, text)


def _rebase(ref: str, base: Path) -> str:
    """A relative path in a plan is relative to the plan's folder; names and hub ids stay as written."""
    candidate = base / Path(ref).expanduser()
    if not Path(ref).expanduser().is_absolute() and candidate.exists():
        return str(candidate)
    return ref


def _evaluate(i: int, entry, name: str, base: Path, line_of: Callable, specs: dict):
    """Resolve one entry, plan it, and compare its figures with its budgets."""
    from kvplan.sources.catalog import resolve_spec
    from kvplan.plan.deploy import resolve_deployment, vllm_refusal
    from kvplan.plan.gating import PROFILE_ENGINES, DeploymentResult, answer_figures, evaluate_budgets
    from kvplan.plan.gpus import resolve_gpu
    from kvplan.plan.pipeline import Settings, run

    ref = _rebase(entry.model, base)
    if ref not in specs:
        try:
            specs[ref] = resolve_spec(ref, fast=True)
        except InputError as exc:
            raise _EntryError(("model",), exc.message) from None
    gpu_ref = _rebase(entry.gpu, base) if entry.gpu is not None else None
    if gpu_ref is not None:
        try:
            resolve_gpu(gpu_ref)
        except InputError as exc:
            raise _EntryError(("gpu",), exc.message) from None
    if entry.engine in PROFILE_ENGINES:
        return _evaluate_profile(i, entry, name, specs[ref], gpu_ref, base, line_of)
    try:
        deployment = resolve_deployment(
            specs[ref],
            gpu_ref,
            **_shared_settings(entry, base),
            **_planner_settings(entry),
            engine=entry.engine,
        )
        layout = deployment.layout()
        refusal = vllm_refusal(deployment.spec, entry.kv_cache_dtype, entry.context) if entry.engine == "vllm" else None
        own = {k: v for k in _option_keys("vllm") if (v := getattr(entry, k)) is not None}
        if entry.engine == "vllm":
            from kvplan.engines.options import vllm_rules
            from kvplan.engines.vllm_rules import block_size_refusal

            rules = vllm_rules(own)  # a value vLLM does not take is this entry's error
            problem = block_size_refusal(entry.block_size, rules, specs[ref])
            if problem:
                raise InputError(problem)
            if rules.max_model_len is not None and entry.context > rules.max_model_len:
                raise InputError(f"context {entry.context:,} is longer than max_model_len {rules.max_model_len:,}: "
                                 "vLLM refuses a request past its max_model_len")
        if deployment.gpu is None or refusal:  # nothing of a GPU is read (a refusal fails every budget in its words)
            settings = Settings(**{**_shared_settings(entry, base), **_planner_settings(entry), **dict.fromkeys(_GPU_KEYS)},
                                engine_options=own)  # no GPU: no budget to start from
        else:
            _check_cost_inputs(entry, deployment.gpu)
            settings = Settings(**_shared_settings(entry, base), **_planner_settings(entry), gpu=gpu_ref,
                                gpu_label=deployment.gpu.name, engine_options=own)
        answer = run(deployment.spec, entry.engine, settings)  # the pipeline, as for every engine
        figures = answer_figures(answer, tp=entry.tp, kv_bytes_per_token=layout.kv_bytes_per_token)
    except InputError as exc:
        raise _as_entry_error(exc.message) from None
    budgets = evaluate_budgets(entry.budgets, figures, lambda key: line_of(("deployments", i, "budgets", key)))
    o = deployment.options
    return DeploymentResult(
        index=i,
        name=name,
        line=line_of(("deployments", i)),
        model=deployment.spec.name,
        gpu=deployment.gpu.name if deployment.gpu is not None else None,
        tp=o.tp,
        pp=o.pp,
        context=o.context,
        batch=o.batch,
        kv_cache_dtype=deployment.kv_format.name,
        engine=o.engine.value,
        budgets=budgets,
    )


_SHARED_KEYS = (
    "gpu_memory", "gpu_bandwidth", "usd_per_hour", "gpu_bf16_tflops", "kv_cache_dtype", "state_dtype",
    "context", "batch", "tp", "dtype", "weights_bytes", "activation_memory", "non_torch_memory", "bandwidth_efficiency",
    "compute_efficiency", "prompt_tokens",
)


# What describes the GPU, its budget and the roofline on it: not read without one.
_GPU_KEYS = ("gpu_memory", "gpu_bandwidth", "usd_per_hour", "gpu_bf16_tflops", "bandwidth_efficiency",
             "compute_efficiency", "calibration", "gpu_memory_utilization", "cuda_total_memory")


def _planner_settings(entry) -> dict:
    """The plan-entry settings only kvplan's planner reads (pp and kvplan.options.PLANNER_KEYS), as keyword arguments."""
    return {key: getattr(entry, key) for key in ("pp", *PLANNER_KEYS)}


def _shared_settings(entry, base: Path) -> dict:
    """The plan-entry settings every engine takes, as keyword arguments (calibration rebased on the plan)."""
    settings = {key: getattr(entry, key) for key in _SHARED_KEYS}
    settings["calibration"] = _rebase(entry.calibration, base) if entry.calibration else None
    return settings


def _evaluate_profile(i: int, entry, name: str, spec, gpu_ref: Optional[str], base: Path, line_of: Callable):
    """One entry under an engine profile (hf, llama.cpp, sglang, trtllm): the engine's bytes and budget rule."""
    from kvplan.plan.gating import DeploymentResult, evaluate_budgets

    try:
        figures, _ = profile_figures(
            spec,
            entry.engine,
            gpu_ref,
            {k: getattr(entry, k) for k in _option_keys(entry.engine)},
            **_shared_settings(entry, base),
            before_costs=lambda gpu: _check_cost_inputs(entry, gpu),
        )
    except InputError as exc:
        raise _as_entry_error(exc.message) from None
    budgets = evaluate_budgets(entry.budgets, figures, lambda key: line_of(("deployments", i, "budgets", key)))
    return DeploymentResult(
        index=i,
        name=name,
        line=line_of(("deployments", i)),
        model=spec.name,
        gpu=figures.gpu,
        tp=entry.tp,
        pp=1,
        context=entry.context,
        batch=entry.batch,
        kv_cache_dtype=figures.kv_cache_dtype,
        engine=entry.engine,
        budgets=budgets,
    )


def _option_keys(engine: str) -> tuple[str, ...]:
    from kvplan.engines.options import OPTION_KEYS

    return OPTION_KEYS[engine]


def profile_figures(spec, engine: str, gpu: Optional[str], values: dict, *, kv_cache_dtype: str = "auto",
                    state_dtype: Optional[str] = None, context: int, batch: int = 1, tp: int = 1,
                    activation_memory=None, non_torch_memory=None, prompt_tokens: Optional[int] = None,
                    before_costs: Optional[Callable] = None, **deployment):
    """`kvplan.plan.gating.Figures` of SPEC under an engine profile, and the planner-side `Deployment`.

    `values` are the engine's option keys (None: the engine's default). The GPU,
    weights and formats resolve as for `estimate` (an ideal, pp-1 deployment, which
    also checks the settings); the pipeline's answer (the engine's cache, budget rule,
    capacity and roofline) gives the figures (`gating.answer_figures`, as for vllm).
    `before_costs(gpu)` checks the GPU before anything is computed on it.
    """
    from kvplan.plan.deploy import resolve_deployment
    from kvplan.engines.compare import ideal_format
    from kvplan.plan.gating import answer_figures
    from kvplan.plan.pipeline import Settings, run

    pair = ideal_format(kv_cache_dtype, spec.dtype)  # an engine-only name (f16, bfloat16): the model's dtype here
    resolved = resolve_deployment(
        spec, gpu, kv_cache_dtype=pair.name, state_dtype=state_dtype, context=context, batch=batch, tp=tp, pp=1,
        engine="ideal", activation_memory=activation_memory, non_torch_memory=non_torch_memory,
        prompt_tokens=prompt_tokens, **deployment,
    )
    layout = resolved.layout()
    if resolved.gpu is not None and before_costs is not None:
        before_costs(resolved.gpu)
    gpu_flags = {k: deployment.get(k) for k in ("gpu_memory", "gpu_bandwidth", "usd_per_hour", "gpu_bf16_tflops",
                                                "bandwidth_efficiency", "compute_efficiency", "calibration")}
    if resolved.gpu is None:  # no GPU: the engine's cache only (what a GPU would be given by is not read)
        gpu_flags = dict.fromkeys(gpu_flags)
    settings = Settings(context=context, batch=batch, kv_cache_dtype=kv_cache_dtype, state_dtype=state_dtype, tp=tp,
                        gpu=gpu if resolved.gpu is not None else None, **gpu_flags,
                        gpu_label=None if resolved.gpu is None else resolved.gpu.name,
                        dtype=deployment.get("dtype"), weights_bytes=deployment.get("weights_bytes"),
                        activation_memory=resolved.options.activation_bytes,
                        non_torch_memory=resolved.options.non_torch_bytes, prompt_tokens=prompt_tokens,
                        engine_options={k: v for k, v in values.items() if v is not None})
    answer = run(spec, engine, settings)  # the engine's cache and, with a GPU, its budget rule, capacity, roofline
    return answer_figures(answer, tp=tp, kv_bytes_per_token=layout.kv_bytes_per_token), resolved


def _check_cost_inputs(entry, gpu) -> None:
    """A cost budget on a GPU without a price (or, for input tokens, without TFLOPS) is a plan error."""
    for key in ("max_usd_per_million_output_tokens", "max_usd_per_million_input_tokens"):
        if getattr(entry.budgets, key) is None:
            continue
        if gpu.usd_per_hour == 0:
            raise _EntryError(("budgets", key), f"GPU {gpu.name!r} has no price; set usd_per_hour in this deployment")
        if key.endswith("input_tokens") and gpu.bf16_tflops == 0:
            raise _EntryError(
                ("budgets", key), f"GPU {gpu.name!r} has no bf16 TFLOPS, so prefill has no time; set gpu_bf16_tflops"
            )


def _write_atomically(target: str, text: str) -> None:
    """Write the --output report atomically (see kvplan.atomic)."""
    from kvplan.atomic import write_text_atomically

    write_text_atomically(target, text, "--output")


# ================================================================== diff


@engine_flags(after="prompt_tokens")
@flag_group("budget", BUDGET, after="gpu_memory")
@flag_group("weights", WEIGHTS, after="engine")
def diff(
    old: Annotated[str, typer.Argument(metavar="OLD", help="A spec YAML or catalog name; with --base, the spec to compare with its own past.", show_default=False)],
    new: Annotated[Optional[str], typer.Argument(metavar="[NEW]", help="A spec YAML or catalog name (omit with --base).", show_default=False)] = None,
    base: Annotated[Optional[str], typer.Option("--base", metavar="REV", help="Compare OLD as of git revision REV (git show REV:path) with the working tree.")] = None,
    gpu: O.gpu = "h100-sxm",
    context: O.context = "8192",
    batch: O.batch = "1",
    kv_cache_dtype: O.kv_cache_dtype = "auto",
    tp: O.tp = "1",
    pp: O.pp = "1",
    engine: O.engine = "vllm",
    weights: dict = None,  # WEIGHTS: --dtype, --weights-bytes
    state_dtype: O.state_dtype = None,
    block_size: O.block_size = None,
    gpu_memory: O.gpu_memory = None,
    budget: dict = None,  # BUDGET: --gpu-memory-utilization ... --cuda-total-memory
    prompt_tokens: O.prompt_tokens = None,
    fail_on_increase: Annotated[
        Optional[float],
        typer.Option("--fail-on-increase", metavar="PCT", help="Exit 1 when KV bytes per token or per sequence grow by more than PCT %."),
    ] = None,
    output: O.output = None,
    force: O.force = False,
    fmt: O.format(DiffFormat) = DiffFormat.table,
    **engine_options: object,
) -> None:
    """KV bytes per token and per sequence, and capacity on --gpu, before and after a spec change."""
    from kvplan.sources.catalog import resolve_spec
    from kvplan.plan.gating import gate_failures, metric_deltas

    if fail_on_increase is not None and not fail_on_increase >= 0:
        raise InputError(f"--fail-on-increase {fail_on_increase} must be a percentage of 0 or more")
    if base is not None:
        if new is not None:
            raise InputError("--base compares one spec with its past: give OLD only, not NEW")
        path = _working_tree_path(old)
        before_spec, before_label = _spec_at_revision(path, old, base), f"{old}@{base}"
        after_spec, after_label = resolve_spec(str(path)), f"{old} (working tree)"
    else:
        if new is None:
            raise InputError("diff needs OLD and NEW specs, or one spec and --base REV (e.g. --base origin/main)")
        before_spec, before_label = resolve_spec(old, fast=True), old
        after_spec, after_label = resolve_spec(new, fast=True), new
    hint = " (diff compares two specs at one setting)"
    weights = read_group(weights, "diff")
    gpu = one_word("gpu", gpu, "diff", hint)
    kv_cache_dtype = one_word("kv_cache_dtype", kv_cache_dtype, "diff", hint)
    tp, pp = one_value("tp", tp, "diff", hint), one_value("pp", pp, "diff", hint)
    settings = dict(
        context=one_value("context", context, "diff", hint), batch=one_value("batch", batch, "diff", hint),
        tp=tp, pp=pp, engine=engine, dtype=weights["dtype"],
    )
    # the planner's and the memory settings, as estimate takes them; in the JSON record when given
    extra = dict(state_dtype=state_dtype, block_size=block_size, gpu_memory=gpu_memory, weights_bytes=weights["weights_bytes"],
                 **read_group(budget, "diff"),
                 prompt_tokens=parse_option("prompt_tokens", prompt_tokens))
    extra = {k: v for k, v in extra.items() if v is not None}
    flags = given_engine_options(engine_options)
    given = {k: v for k, v in flags.items() if v is not None}  # None: not given, the engine's default
    options = _diff_engine_options(engine, tp, pp, given, [k for k in PLANNER_KEYS if k in extra])
    # vLLM's own flags (--vllm-version, --kv-cache-memory-bytes, ...) for the planner's engine
    own = {k: v for k, v in given.items() if k in _option_keys("vllm")} if engine == "vllm" else {}
    if own or (engine == "vllm" and block_size is not None):
        from kvplan.engines.options import vllm_rules
        from kvplan.engines.vllm_rules import block_size_refusal

        rules = vllm_rules(own)
        problem = block_size_refusal(block_size, rules, before_spec)
        if problem:
            raise InputError(problem)
        if rules.max_model_len is not None and settings["context"] > rules.max_model_len:
            raise InputError(f"--context {settings['context']:,} is longer than --max-model-len "
                             f"{rules.max_model_len:,}: vLLM refuses a request past its max_model_len")
    before, before_side = _diff_figures(before_spec, gpu, kv_cache_dtype, settings, options, before_label, extra, own)
    after, after_side = _diff_figures(after_spec, gpu, kv_cache_dtype, settings, options, after_label, extra, own)
    deltas = metric_deltas(before, after)
    failures = gate_failures(deltas, fail_on_increase) if fail_on_increase is not None else []
    record = {
        "old": {"ref": before_label, **before_side},
        "new": {"ref": after_label, **after_side},
        **settings,
        **extra,
        **({"engine_options": options} if options is not None else {}),
        **({"vllm_options": own} if own else {}),
        "metrics": {d.metric: d.to_dict() for d in deltas},
        "fail_on_increase_pct": fail_on_increase,
        "failed": [d.metric for d in failures],
        "passed": not failures,
    }
    _render_diff(record, deltas, fmt)
    if failures:
        grew = "; ".join(f"{d.metric} grew {_pct(d.delta_pct)}" for d in failures)
        sys.stderr.write(f"kvplan diff: {grew} (more than --fail-on-increase {fail_on_increase:g}%)\n")
        sys.exit(1)


def _diff_engine_options(engine: str, tp: int, pp: int, given: dict, planner: list) -> Optional[dict]:
    """The engine flags given, checked against --engine (None: a planner engine, vllm or ideal).

    `planner` are the planner's keys given (--block-size ...): a profile refuses them, as in estimate.
    """
    from kvplan.engines.options import check_flags
    from kvplan.plan.gating import ENGINES, PROFILE_ENGINES

    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    check_flags(engine, [*given, *planner], tp=tp, pp=pp, command="diff")
    return given if engine in PROFILE_ENGINES else None


def _diff_figures(spec, gpu: str, kv_cache_dtype: str, settings: dict, options: Optional[dict],
                  label: str, extra: Optional[dict] = None, vllm_options: Optional[dict] = None) -> tuple[dict, dict]:
    """The DIFF_METRICS of one spec, and what describes its side (model, GPU, formats).

    Under an engine profile (`options` not None) the bytes per token and per
    sequence stay the spec's; capacity and max context are the engine's.
    """
    from kvplan.plan.deploy import resolve_deployment
    from kvplan.engines.vllm_rules import kv_cache_dtype_refusal

    if _weights_unknown(spec, extra):  # the KV figures stand; capacity waits for the weights (--weights-bytes)
        return _kv_only_figures(spec, gpu, kv_cache_dtype, settings, options, label, extra)
    if options is not None:
        s = settings
        figures, resolved = profile_figures(spec, s["engine"], gpu, options, kv_cache_dtype=kv_cache_dtype,
                                            context=s["context"], batch=s["batch"], tp=s["tp"], dtype=s["dtype"],
                                            **(extra or {}))
        if figures.unavailable:
            raise InputError(f"{label}: {figures.unavailable}")
        per_sequence = resolved.layout().at(s["context"], s["batch"]).kv_bytes_per_sequence
        return (
            {
                "kv_bytes_per_token": figures.kv_bytes_per_token,
                "kv_bytes_per_sequence": per_sequence,
                "max_concurrent_sequences": figures.max_concurrent_sequences,
                "max_context_tokens": figures.max_context_tokens,
            },
            {"model": spec.name, "gpu": figures.gpu, "kv_cache_dtype": figures.kv_cache_dtype,
             "weights_dtype": resolved.planner().weights_dtype},
        )
    deployment = resolve_deployment(spec, gpu, kv_cache_dtype=kv_cache_dtype, **settings, **(extra or {}))
    # a format vLLM lacks stops diff, as an engine profile's refusal does; a --context past a spec's
    # max_position_embeddings does not (diff compares specs at one reference context, and CI diffs every
    # changed spec at the same one): its max context is capped at the spec's limit
    refusal = kv_cache_dtype_refusal(spec, kv_cache_dtype) if settings["engine"] == "vllm" else None
    if refusal:
        raise InputError(f"{label}: vllm refuses: {refusal}")
    from kvplan.plan.pipeline import Settings, run

    layout = deployment.layout()
    estimate = layout.at(settings["context"], settings["batch"])
    deployment.planner()  # no GPU: refused in its words
    s = {k: v for k, v in settings.items() if k != "engine"}
    plan = run(spec, settings["engine"], Settings(**s, **(extra or {}), gpu=gpu, gpu_label=deployment.gpu.name,
                                                  kv_cache_dtype=kv_cache_dtype, engine_options=vllm_options or {}),
               engine_rows=False).plan
    figures = {
        "kv_bytes_per_token": layout.kv_bytes_per_token,
        "kv_bytes_per_sequence": estimate.kv_bytes_per_sequence,
        "max_concurrent_sequences": plan.max_concurrent_sequences,
        "max_context_tokens": plan.max_context_tokens,
    }
    side = {"model": spec.name, "gpu": plan.gpu, "kv_cache_dtype": plan.kv_cache_dtype, "weights_dtype": plan.weights_dtype}
    return figures, side


def _working_tree_path(ref: str) -> Path:
    """The file behind OLD for --base: a path, or a catalog name's shipped YAML."""
    from kvplan.sources.catalog import SPECS_DIR

    path = Path(ref).expanduser()
    if path.is_file():
        return path
    catalog_file = SPECS_DIR / f"{ref.lower()}.yaml"
    if catalog_file.is_file():
        return catalog_file
    raise InputError(f"{ref}: no such spec file in the working tree (--base compares a file with its past)")


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, encoding="utf-8", errors="replace"
        )
    except FileNotFoundError:
        raise InputError("--base needs git, which is not installed (or not on PATH)") from None


def _spec_at_revision(path: Path, ref: str, rev: str):
    """The spec in `path` as of git revision `rev` (`git show REV:./file`, relative to the file's folder)."""
    from pydantic import ValidationError

    from kvplan.sources.catalog import format_validation_error
    from kvplan.model.spec import ModelSpec

    folder = path.resolve().parent
    if _git(folder, "rev-parse", "--show-toplevel").returncode != 0:
        raise InputError(f"--base {rev}: {ref} is not inside a git repository")
    if _git(folder, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise InputError(f"--base {rev!r} is not a revision of this repository (try a branch, tag or commit)")
    shown = _git(folder, "show", f"{rev}:./{path.name}")
    if shown.returncode != 0:
        raise InputError(f"--base {rev}: {ref} does not exist at {rev} (a new file has nothing to compare with)")
    where = f"{ref}@{rev}"
    data, line_of = _parse_yaml_text(shown.stdout, where)
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of fields at the top level")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, where, line_of, list(data), ModelSpec)) from None


def _parse_yaml_text(text: str, where: str):
    """YAML text (not a file) -> data and a key-path -> line function; errors name `where`."""
    from kvplan.sources.catalog import read_yaml_text

    return read_yaml_text(text, where)


def _pct(value: Optional[float]) -> str:
    if value is None:
        return "—"
    return "0.00%" if value == 0 else f"{value:+.2f}%"


def _weights_unknown(spec, extra: Optional[dict]) -> bool:
    """No weights to place on the GPU: no num_parameters, no file_weight_bytes, no --weights-bytes."""
    return (spec.num_parameters is None and getattr(spec, "file_weight_bytes", None) is None
            and (extra or {}).get("weights_bytes") is None)


def _kv_only_figures(spec, gpu: str, kv_cache_dtype: str, settings: dict, options: Optional[dict], label: str,
                     extra: Optional[dict]) -> tuple[dict, dict]:
    """diff's KV figures of a spec whose weights are unknown; its capacity figures are None (said on stderr)."""
    from kvplan.engines.compare import ideal_format
    from kvplan.plan.deploy import resolve_deployment
    from kvplan.plan.planner import missing_weights_problem

    name = ideal_format(kv_cache_dtype, spec.dtype).name if options is not None else kv_cache_dtype
    s = dict(settings, engine="ideal" if options is not None else settings["engine"])
    if options is not None:
        s["pp"] = 1
    deployment = resolve_deployment(spec, gpu, kv_cache_dtype=name, **s, **(extra or {}))
    layout = deployment.layout()
    sys.stderr.write(f"note: {label}: max_concurrent_sequences and max_context_tokens not sized: "
                     f"{missing_weights_problem(spec).split(': ', 1)[1]}\n")
    figures = {
        "kv_bytes_per_token": layout.kv_bytes_per_token,
        "kv_bytes_per_sequence": layout.at(settings["context"], settings["batch"]).kv_bytes_per_sequence,
        "max_concurrent_sequences": None,
        "max_context_tokens": None,
    }
    gpu_name = deployment.gpu.name if deployment.gpu is not None else gpu
    return figures, {"model": spec.name, "gpu": gpu_name, "kv_cache_dtype": deployment.kv_format.name,
                     "weights_dtype": None}


def _diff_cell(metric: str, value: Optional[int], signed: bool = False) -> str:
    if value is None:
        return "—"
    sign = "+" if signed and value > 0 else ""
    if metric.startswith("kv_bytes"):
        from kvplan.units import fmt_bytes

        text = f"{sign}{value:,} B"
        return text + f" ({sign}{fmt_bytes(value)})" if abs(value) >= 1024 else text
    return f"{sign}{value:,}"


DIFF_HEADERS = ["metric", "before", "after", "delta", "%"]


def _render_diff(record: dict, deltas, fmt: DiffFormat) -> None:
    from kvplan.cli import render

    if fmt is DiffFormat.json:
        render.write(render.to_json(record))
        return
    rows = [
        [d.metric, _diff_cell(d.metric, d.before), _diff_cell(d.metric, d.after), _diff_cell(d.metric, d.delta, True), _pct(d.delta_pct)]
        for d in deltas
    ]
    title = (
        f"{record['old']['ref']} → {record['new']['ref']} · {record['new']['gpu']} · context {record['context']:,} · "
        f"batch {record['batch']} · KV {record['old']['kv_cache_dtype']} → {record['new']['kv_cache_dtype']} · tp {record['tp']}"
        + (f" · engine {record['engine']}" if "engine_options" in record else "")
    )
    verdict = ""
    if record["fail_on_increase_pct"] is not None:
        limit = f"{record['fail_on_increase_pct']:g}%"
        verdict = f"FAIL: {', '.join(record['failed'])} grew more than {limit}" if record["failed"] else f"pass: no KV byte figure grew more than {limit}"
    if fmt is DiffFormat.markdown:
        text = f"**{title}**\n\n" + render.markdown_table(DIFF_HEADERS, rows)
        render.write(text + (f"\n{verdict}\n" if verdict else ""))
        return
    out = render.console()
    out.print(render.rich_table(title, DIFF_HEADERS, rows))
    if verdict:
        out.print(verdict, markup=False)
