"""CI gates: the plan file's schema, budget evaluation and spec deltas. Pure: no I/O.

A plan file (YAML) lists deployments, each with budgets:

    version: 1
    deployments:
      - name: chat-8b            # optional; unique
        model: llama-3.1-8b      # whatever `kvplan estimate` accepts
        gpu: h100-sxm
        context: 32k
        budgets:
          min_concurrent_sequences: 8
          max_kv_bytes_per_token: 128KiB

Deployment keys are estimate's flags with `_` for `-` (`tp`, `pp` for the
parallel sizes). Each budget compares one figure of the deployment's plan with a
limit (`BUDGETS`); a figure that does not exist (no KV budget, nothing fits)
fails its budget. Models are strict: unknown keys, wrong types and bad values are
errors that name their key path, which the loader turns into `file:line` lines.

`engine: hf|llama.cpp|sglang|trtllm` sizes the deployment with that engine's
profile (`kvplan.engines`) and takes that engine's own keys (`ubatch_size`,
`mem_fraction_static`, ...; `kvplan.engines.options.OPTION_KEYS`); a key of
another engine is an error (`engine_key_problems`). `answer_figures` turns any
engine's answer (cache, capacity, roofline) into the budgets' figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Callable, Literal, Optional

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kvplan.errors import InputError
from kvplan.model.formats import UnknownFormatError, parse_format_pair, parse_state_format
from kvplan.plan.planner import WEIGHT_DTYPES
from kvplan.model.spec import NotBoolean
from kvplan.units import fmt_bytes, gpu_memory_problem, parse_bytes, parse_count_as

# ------------------------------------------------------------------ plan file


def _tokens(value: Any) -> Any:
    """'32k' -> 32768, '1.5k' -> 1536 (k = 1024, m = 1024**2); integers pass through to the strict int check."""
    if isinstance(value, str):
        return parse_count_as(value, "a whole number of tokens (e.g. 32768 or 32k)")
    return value


def _count(value: Any) -> Any:
    """'1k' -> 1024 for a count that is not tokens (batch, tp, pp), as on the command line; ints pass through."""
    if isinstance(value, str):
        return parse_count_as(value, "a whole number (e.g. 8 or 1k)")
    return value


def _bytes(value: Any) -> Any:
    """'128KiB' -> 131072, '80GB' -> 80000000000; integers pass through (bytes are integers)."""
    if isinstance(value, str):
        try:
            return parse_bytes(value, "")
        except InputError:
            raise ValueError(f"{value!r} is not a size; write bytes or a number with a unit, e.g. 5GiB or 80GB") from None
    return value


def _gpu_memory(value: Any) -> Any:
    """A size as for `_bytes`, refused below 1 GiB (a bare `80` is 80 bytes: did you mean 80GiB?)."""
    nbytes = _bytes(value)
    if isinstance(nbytes, int) and not isinstance(nbytes, bool) and nbytes > 0:
        problem = gpu_memory_problem(value, nbytes)
        if problem:
            raise ValueError(f"{str(value).strip()}: {problem}")
    return nbytes


# Every number refuses a boolean with its own words (NotBoolean; strict mode alone says only "Input
# should be a valid integer"). Annotated runs the before-validators last to first: NotBoolean first.
def _dtype_spelling(value: Any) -> Any:
    """A plan's `dtype` in vLLM's words (bfloat16, half, float32) as kvplan's (bf16, fp16, fp32)."""
    from kvplan.engines.vllm_flags import weights_dtype

    return weights_dtype(value) if isinstance(value, str) else value  # auto: None, the model's own


TokenCount = Annotated[int, BeforeValidator(_tokens), NotBoolean, Field(ge=1)]
Count = Annotated[int, BeforeValidator(_count), NotBoolean, Field(ge=1)]
GpuMemory = Annotated[int, BeforeValidator(_gpu_memory), NotBoolean, Field(gt=0)]
ByteCount = Annotated[int, BeforeValidator(_bytes), NotBoolean, Field(gt=0)]
ByteCountOrZero = Annotated[int, BeforeValidator(_bytes), NotBoolean, Field(ge=0)]
Share = Annotated[float, NotBoolean, Field(gt=0, le=1)]
PositiveFloat = Annotated[float, NotBoolean, Field(gt=0)]
PositiveInt = Annotated[int, NotBoolean, Field(ge=1)]

# Names and paths in a plan end up in every report: a line break splits a Markdown table row,
# a C0 control is not allowed in XML 1.0 (JUnit), and a bidi override reorders what a reviewer
# reads. They are refused where the plan is read, with the line, rather than escaped per format.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _one_line(value: str) -> str:
    """A plan's text: printable, on one line (no C0/C1 control, line separator or bidi override)."""
    import unicodedata

    for i, char in enumerate(value):
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS:
            raise ValueError(
                f"{value!r} holds the control character {char!r} (U+{ord(char):04X}) at position {i + 1}; "
                "reports print this text, so write it on one line of printable characters"
            )
    return value


Text = Annotated[str, Field(min_length=1), AfterValidator(_one_line)]


class Budgets(BaseModel):
    """Limits for one deployment; each is optional, at least one is required."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    min_concurrent_sequences: Optional[PositiveInt] = None  # sequences of `context` tokens that fit
    max_kv_bytes_per_token: Optional[ByteCount] = None  # all layers, one copy, at kv_cache_dtype
    min_headroom_pct: Optional[Annotated[float, NotBoolean, Field(lt=100)]] = None  # KV budget left at `batch`, %
    max_decode_step_ms: Optional[PositiveFloat] = None  # one decode step at `batch`, ms
    max_usd_per_million_output_tokens: Optional[PositiveFloat] = None  # at the largest batch that fits
    max_usd_per_million_input_tokens: Optional[PositiveFloat] = None  # prefill of prompt_tokens
    min_max_context_tokens: Optional[TokenCount] = None  # longest context at which `batch` sequences fit

    @model_validator(mode="after")
    def _at_least_one(self) -> "Budgets":
        if not self.given():
            raise ValueError(f"give at least one budget: {', '.join(BUDGETS)}")
        return self

    def given(self) -> dict[str, float]:
        """The budgets set, in `BUDGETS` order: key -> limit."""
        return {k: getattr(self, k) for k in BUDGETS if getattr(self, k) is not None}


def _on_off(value: Any) -> Any:
    """YAML reads a bare `on` / `off` as true / false: llama.cpp's -fa on|off|auto."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


def _version(value: Any) -> Any:
    """`transformers_version: 4` (a YAML int) or "4"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _vllm_version(value: Any) -> Any:
    """`vllm_version: 0.32` (a YAML float; 0.10 reads as 0.1) or "0.32"."""
    if isinstance(value, float):
        return f"{value:.2f}"
    return value


# The engines (kvplan.options: import-free, so a vLLM-only plan does not import the profiles).
from kvplan.options import CHOICES as ENGINES, PROFILES as PROFILE_ENGINES  # noqa: E402


class DeploymentEntry(BaseModel):
    """One deployment: estimate's flags as keys, plus `name` and `budgets`.

    The keys are the plan keys of the option table (`kvplan.options.OPTIONS`, `plan=True`),
    each read as its flag is (`1k`, `2GiB`); tests/test_options.py checks that the two agree.

    The engine options (hf_cache ... free_gpu_memory_fraction) default to None:
    unset, the engine's own default applies (`kvplan.engines.options`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    name: Optional[Text] = None
    model: Text  # a catalog name or a path resolve_spec accepts (relative paths: to the plan's folder)
    gpu: Optional[Text] = None  # a catalog GPU or a GPU YAML file
    gpu_memory: Optional[GpuMemory] = None  # at least 1 GiB (kvplan.units.MIN_GPU_MEMORY_BYTES)
    gpu_bandwidth: Optional[PositiveFloat] = None  # GB/s
    usd_per_hour: Optional[Annotated[float, NotBoolean, Field(ge=0)]] = None
    gpu_bf16_tflops: Optional[PositiveFloat] = None
    context: TokenCount  # required: every gate is at a stated context
    batch: Count = 1
    tp: Count = 1
    pp: Count = 1
    engine: Literal[ENGINES] = "vllm"  # type: ignore[valid-type]  # before kv_cache_dtype: its check reads it
    kv_cache_dtype: Text = "auto"
    state_dtype: Optional[Text] = None
    # kvplan's names or vLLM's spellings (bfloat16, half, float32, auto: kvplan.engines.vllm_flags.weights_dtype)
    dtype: Annotated[Optional[Literal[WEIGHT_DTYPES]], BeforeValidator(_dtype_spelling)] = None  # type: ignore[valid-type]
    weights_bytes: Optional[ByteCount] = None  # the weights' total bytes when kvplan cannot size them
    block_size: Optional[PositiveInt] = None
    gpu_memory_utilization: Optional[Share] = None  # None: vLLM's default at the plan's --vllm-version
    activation_memory: Optional[ByteCountOrZero] = None
    non_torch_memory: Optional[ByteCountOrZero] = None
    max_num_batched_tokens: Optional[TokenCount] = None  # None: vLLM's default for the GPU
    max_num_seqs: Optional[Count] = None  # None: vLLM's default for the GPU; 1k as the flag reads it
    cuda_total_memory: Optional[ByteCount] = None  # cudaMemGetInfo's total (None: the GPU's memory)
    bandwidth_efficiency: Optional[Share] = None
    compute_efficiency: Optional[Share] = None
    calibration: Optional[Text] = None  # a `kvplan measure -o` JSON report
    prompt_tokens: Optional[TokenCount] = None
    # vllm (its own flags; kvplan.engines.options.vllm_rules checks their values)
    vllm_version: Optional[Annotated[Text, BeforeValidator(_vllm_version)]] = None
    vllm_device: Optional[Text] = None  # --device: cuda or cpu
    max_model_len: Optional[TokenCount] = None
    enable_prefix_caching: Optional[bool] = None
    mamba_cache_mode: Optional[Text] = None
    disable_hybrid_kv_cache_manager: Optional[bool] = None
    num_gpu_blocks_override: Optional[PositiveInt] = None
    kv_cache_memory_bytes: Optional[ByteCount] = None
    # hf (transformers)
    hf_cache: Optional[Text] = None  # dynamic | static | quantized
    max_cache_len: Optional[TokenCount] = None
    generate: Optional[bool] = None
    transformers_version: Optional[Annotated[Text, BeforeValidator(_version)]] = None
    quant_backend: Optional[Text] = None
    nbits: Optional[PositiveInt] = None
    q_group_size: Optional[PositiveInt] = None
    residual_length: Optional[Annotated[int, NotBoolean, Field(ge=0)]] = None
    # llama.cpp
    parallel: Optional[PositiveInt] = None
    ctx_size: Optional[TokenCount] = None
    ubatch_size: Optional[TokenCount] = None
    n_batch: Optional[TokenCount] = None
    swa_full: Optional[bool] = None
    flash_attn: Optional[Annotated[Text, BeforeValidator(_on_off)]] = None
    cache_type_k: Optional[Text] = None
    cache_type_v: Optional[Text] = None
    kv_unified: Optional[bool] = None
    # sglang
    mem_fraction_static: Optional[Share] = None
    page_size: Optional[PositiveInt] = None
    swa_full_tokens_ratio: Optional[Share] = None
    max_total_tokens: Optional[TokenCount] = None
    # trtllm
    tokens_per_block: Optional[PositiveInt] = None
    free_gpu_memory_fraction: Optional[Share] = None
    budgets: Budgets

    @field_validator("kv_cache_dtype")
    @classmethod
    def _kv_format(cls, value: str, info: ValidationInfo) -> str:
        try:
            if info.data.get("engine") in PROFILE_ENGINES:
                # the engine judges its own names (f16, fp8_e4m3 ...) and refuses as it would; a name no
                # engine takes is a typo here, as in `kvplan compare`
                from kvplan.engines.compare import check_kv_dtype

                check_kv_dtype(value)
            else:
                parse_format_pair(value, "bf16")  # syntax only; 'auto' is resolved against the model later
        except UnknownFormatError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("state_dtype")
    @classmethod
    def _state_format(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                parse_state_format(value)
            except UnknownFormatError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _gpu_for_budgets(self) -> "DeploymentEntry":
        if self.has_gpu:
            return self
        needing = [k for k in self.budgets.given() if BUDGETS[k].needs_gpu]
        if needing:
            raise ValueError(
                f"{', '.join(needing)} needs a gpu (or gpu_memory and gpu_bandwidth); "
                "only max_kv_bytes_per_token is checked without one"
            )
        return self

    @property
    def has_gpu(self) -> bool:
        return self.gpu is not None or (self.gpu_memory is not None and self.gpu_bandwidth is not None)

    @property
    def label(self) -> str:
        """`name`, or a name built from model, GPU, engine (when not vllm), tp and context.

        Unnamed entries that still share it get the keys that tell them apart (`plan_labels`).
        """
        if self.name:
            return self.name
        where = f" on {self.gpu or 'custom'}" if self.has_gpu else ""
        via = f" via {self.engine}" if self.engine != "vllm" else ""
        parallel = f" tp{self.tp}" + (f" pp{self.pp}" if self.pp > 1 else "")
        return f"{self.model}{where}{via}{parallel} @{self.context}"


class PlanFile(BaseModel):
    """The whole plan file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    version: Annotated[Literal[1], NotBoolean] = 1  # `version: true` is not 1
    deployments: tuple[DeploymentEntry, ...] = Field(strict=False)  # YAML gives a list

    @field_validator("deployments")
    @classmethod
    def _not_empty(cls, value: tuple) -> tuple:
        # an after-validator, not min_length: that one also fires when an entry is invalid
        if not value:
            raise ValueError("list at least one deployment")
        return value


def engine_key_problems(entry: DeploymentEntry) -> list[tuple[str, str]]:
    """(key, message) for each key the entry's engine does not read, and each parallel size it cannot take."""
    from kvplan.engines.options import key_problems

    given = [k for k in type(entry).model_fields if k in entry.model_fields_set]  # in the model's order
    return [(p.key, p.message(entry.engine)) for p in key_problems(entry.engine, given, tp=entry.tp, pp=entry.pp)]


# Keys the automatic name (DeploymentEntry.label) already shows.
_LABEL_KEYS = ("name", "budgets", "model", "gpu", "engine", "tp", "pp", "context")


def plan_labels(plan: PlanFile) -> list[str]:
    """Every deployment's name: `name`, else its automatic one (`DeploymentEntry.label`).

    Unnamed entries whose automatic names clash get `key=value` for each other key
    whose value differs among them and is not the key's default (in the plan
    model's order), so two entries that differ only by kv_cache_dtype or batch are
    named apart; entries that differ in nothing but budgets still clash
    (`duplicate_labels`).
    """
    labels = [entry.label for entry in plan.deployments]
    clashes: dict[str, list[int]] = {}
    for i, entry in enumerate(plan.deployments):
        if entry.name is None:
            clashes.setdefault(labels[i], []).append(i)
    for indices in clashes.values():
        if len(indices) < 2:
            continue
        entries = [plan.deployments[i] for i in indices]
        keys = [k for k in DeploymentEntry.model_fields
                if k not in _LABEL_KEYS and len({repr(getattr(e, k)) for e in entries}) > 1]
        for i, entry in zip(indices, entries):
            # a key at its default is left out: two entries that differ in a key cannot both be at its default
            shown = [f"{k}={getattr(entry, k)}" for k in keys
                     if getattr(entry, k) != DeploymentEntry.model_fields[k].default]
            if shown:
                labels[i] += " " + " ".join(shown)
    return labels


def duplicate_labels(plan: PlanFile) -> list[tuple[int, int, str]]:
    """(index, index of the first entry with that name, the name) for each repeated name (`plan_labels`)."""
    first: dict[str, int] = {}
    out = []
    for i, label in enumerate(plan_labels(plan)):
        if label in first:
            out.append((i, first[label], label))
        else:
            first[label] = i
    return out


# ------------------------------------------------------------------ budgets


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """What a budget key compares: the figure, the direction, its unit."""

    metric: str
    comparison: Literal[">=", "<="]
    unit: str
    needs_gpu: bool = True
    missing: str = ""  # why the figure can be absent (the budget then fails)


BUDGETS: dict[str, BudgetRule] = {
    "min_concurrent_sequences": BudgetRule("max_concurrent_sequences", ">=", "sequences"),
    "max_kv_bytes_per_token": BudgetRule("kv_bytes_per_token", "<=", "B", needs_gpu=False),
    "min_headroom_pct": BudgetRule("headroom_pct", ">=", "%", missing="the weights leave no KV budget on this GPU"),
    "max_decode_step_ms": BudgetRule("decode_step_ms", "<=", "ms", missing="not one sequence fits, so no step runs"),
    "max_usd_per_million_output_tokens": BudgetRule(
        "usd_per_million_output_tokens", "<=", "$", missing="not one sequence fits, so no token is produced"
    ),
    "max_usd_per_million_input_tokens": BudgetRule(
        "usd_per_million_input_tokens", "<=", "$", missing="not one sequence fits, so no token is produced"
    ),
    "min_max_context_tokens": BudgetRule("max_context_tokens", ">=", "tokens"),
}


@dataclass(frozen=True, slots=True)
class Figures:
    """The numbers budgets are checked against, for one deployment (None: no GPU, or none exists)."""

    model: str
    gpu: Optional[str]
    kv_cache_dtype: str
    kv_bytes_per_token: int
    max_concurrent_sequences: Optional[int] = None
    headroom_pct: Optional[float] = None
    decode_step_ms: Optional[float] = None
    usd_per_million_output_tokens: Optional[float] = None
    usd_per_million_input_tokens: Optional[float] = None
    max_context_tokens: Optional[int] = None
    notes: tuple[tuple[str, str], ...] = ()  # (metric, how it was computed), shown beside its value
    unavailable: Optional[str] = None  # the engine refuses the deployment: every budget fails with this



@dataclass(frozen=True, slots=True)
class BudgetResult:
    """One budget of one deployment: the figure, the limit, pass or fail."""

    budget: str  # the plan key, e.g. min_concurrent_sequences
    metric: str  # the figure compared, e.g. max_concurrent_sequences
    comparison: str  # ">=" or "<=": the figure must be this to the limit
    value: Optional[float]  # None: the figure does not exist (see note)
    limit: float
    unit: str
    passed: bool
    line: Optional[int]  # the budget's line in the plan file
    note: Optional[str] = None

    @property
    def message(self) -> str:
        """'max_concurrent_sequences is 13; min_concurrent_sequences needs >= 16'."""
        value = format_value(self.value, self.unit) if self.value is not None else f"absent ({self.note})"
        return f"{self.metric} is {value}; {self.budget} needs {self.comparison} {format_value(self.limit, self.unit)}"


@dataclass(frozen=True, slots=True)
class DeploymentResult:
    """Every budget of one deployment, with the settings that produced the figures."""

    index: int
    name: str
    line: Optional[int]
    model: str
    gpu: Optional[str]
    tp: int
    pp: int
    context: int
    batch: int
    kv_cache_dtype: str
    engine: str
    budgets: tuple[BudgetResult, ...]

    @property
    def passed(self) -> bool:
        return all(b.passed for b in self.budgets)


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The outcome of a plan file."""

    plan: str  # the plan file as given
    deployments: tuple[DeploymentResult, ...]

    @property
    def results(self) -> list[tuple[DeploymentResult, BudgetResult]]:
        return [(d, b) for d in self.deployments for b in d.budgets]

    @property
    def failed(self) -> int:
        return sum(not b.passed for _, b in self.results)

    @property
    def passed(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict:
        total = len(self.results)
        deployments = []
        for d in self.deployments:
            record = asdict(d)
            record["passed"] = d.passed
            deployments.append(record)
        return {
            "plan": self.plan,
            "passed": self.passed,
            "summary": {
                "deployments": len(self.deployments),
                "budgets": total,
                "passed": total - self.failed,
                "failed": self.failed,
            },
            "deployments": deployments,
        }


def evaluate_budgets(budgets: Budgets, figures: Figures, line_of: Callable[[str], Optional[int]]) -> tuple[BudgetResult, ...]:
    """Compare each budget given with its figure; `line_of(key)` is the budget's line in the plan."""
    out = []
    notes = dict(figures.notes)
    for key, limit in budgets.given().items():
        rule = BUDGETS[key]
        value = None if figures.unavailable else getattr(figures, rule.metric)
        if figures.unavailable:
            passed, note = False, figures.unavailable
        elif value is None:
            passed, note = False, rule.missing or "not computed"
        else:
            passed = value >= limit if rule.comparison == ">=" else value <= limit
            note = notes.get(rule.metric)
        out.append(BudgetResult(key, rule.metric, rule.comparison, value, limit, rule.unit, passed, line_of(key), note))
    return tuple(out)


# ------------------------------------------------------------------ figures of an answer


def answer_figures(answer: Any, *, tp: int, kv_bytes_per_token: int) -> Figures:
    """The budgets' figures of one engine's answer (`kvplan.plan.pipeline.run`), every engine alike.

    Capacity and max context are the engine's (`EngineCapacity`); headroom is its KV budget
    less what the batch takes on one rank (vLLM's blocks on the tightest stage, a profile's
    cache / tp); decode step and costs are kvplan's roofline (`answer.plan` for ideal and vllm,
    `answer.roofline` for a profile, with the KV bytes the engine allocates: noted on the
    figure). A configuration the engine refuses makes every figure unavailable, in its words.
    """
    cache, capacity, plan = answer.cache, answer.capacity, answer.plan
    fmt = plan.kv_cache_dtype if plan is not None else cache.kv_cache_dtype if cache is not None else None
    base = {"model": answer.model, "gpu": None if capacity is None else capacity.gpu, "kv_cache_dtype": fmt,
            "kv_bytes_per_token": kv_bytes_per_token}
    if cache is not None and cache.kv_bytes_total is None:  # refused, or a pool kvplan does not size
        why = "; ".join(cache.refusals) or (cache.notes[0] if cache.notes else "no bytes")
        return Figures(**base, unavailable=f"{answer.engine} refuses: {why}" if cache.refusals else f"{answer.engine}: {why}")
    if capacity is None:
        return Figures(**base)
    roof = plan if plan is not None else answer.roofline
    budget = capacity.kv_budget_bytes  # per rank
    need = plan.kv_bytes_per_gpu_at_batch if plan is not None else cache.kv_bytes_total // tp
    headroom = round((budget - need) / budget * 100, 3) if budget > 0 else None  # as Planner.plan rounds it
    notes = []
    if plan is None:  # a profile: the roofline reads the KV bytes the engine allocates, its kernels are not modelled
        roofline = f"kvplan's roofline with the KV bytes {answer.engine} allocates (its kernels are not modelled)"
        notes = [(k, roofline) for k, v in (("decode_step_ms", roof.decode_step_s),
                                            ("usd_per_million_output_tokens", roof.usd_per_million_output_tokens))
                 if v is not None]
    return Figures(
        **base,
        max_concurrent_sequences=capacity.max_concurrent_sequences,
        headroom_pct=headroom,
        decode_step_ms=None if roof.decode_step_s is None else roof.decode_step_s * 1000,
        usd_per_million_output_tokens=roof.usd_per_million_output_tokens,
        usd_per_million_input_tokens=roof.usd_per_million_input_tokens,
        max_context_tokens=capacity.max_context_tokens,
        notes=tuple(notes),
    )


def format_value(value: Optional[float], unit: str) -> str:
    """A figure with its unit: '131,072 B (128.00 KiB)', '7.600 ms', '$1.714', '92.78%'."""
    if value is None:
        return "—"
    if unit == "B":
        text = f"{int(value):,} B"
        return text + f" ({fmt_bytes(value)})" if value >= 1024 else text
    if unit == "ms":
        return f"{value:,.3f} ms"
    if unit == "$":
        return f"${value:,.3f}"
    if unit == "%":
        return f"{value:,.2f}%"
    if unit in ("sequences", "tokens"):
        return f"{int(value):,}"
    return f"{value:,}"


# ------------------------------------------------------------------ diff

DIFF_METRICS = ("kv_bytes_per_token", "kv_bytes_per_sequence", "max_concurrent_sequences", "max_context_tokens")
# The metrics `--fail-on-increase` gates: growth in bytes is what a config change must justify.
GATED_METRICS = ("kv_bytes_per_token", "kv_bytes_per_sequence")


@dataclass(frozen=True, slots=True)
class MetricDelta:
    """One figure before and after a spec change."""

    metric: str
    before: Optional[int]  # None: not sized (a capacity figure of a spec whose weights are unknown)
    after: Optional[int]

    @property
    def delta(self) -> Optional[int]:
        return None if self.before is None or self.after is None else self.after - self.before

    @property
    def delta_pct(self) -> Optional[float]:
        """The change in % of `before`; None when before is 0 or a side is not sized."""
        return None if self.delta is None or self.before == 0 else self.delta / self.before * 100

    def increase_exceeds(self, pct: float) -> bool:
        """True when the figure grew by more than `pct` % (any growth from 0 counts)."""
        if self.delta is None or self.delta <= 0:
            return False
        return self.before == 0 or self.delta * 100 > pct * self.before

    def to_dict(self) -> dict:
        return {"before": self.before, "after": self.after, "delta": self.delta, "delta_pct": self.delta_pct}


def metric_deltas(before: dict[str, int], after: dict[str, int]) -> tuple[MetricDelta, ...]:
    """`DIFF_METRICS` before and after."""
    return tuple(MetricDelta(m, before[m], after[m]) for m in DIFF_METRICS)


def gate_failures(deltas: tuple[MetricDelta, ...], pct: float) -> list[MetricDelta]:
    """The gated metrics that grew by more than `pct` %."""
    return [d for d in deltas if d.metric in GATED_METRICS and d.increase_exceeds(pct)]
