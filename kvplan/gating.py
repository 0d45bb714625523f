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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Callable, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from kvplan.errors import InputError
from kvplan.formats import UnknownFormatError, parse_format, parse_format_pair
from kvplan.planner import DEFAULT_GPU_MEMORY_UTILIZATION, WEIGHT_DTYPES
from kvplan.units import fmt_bytes, parse_bytes
from kvplan.vllm_rules import DEFAULT_MAX_NUM_BATCHED_TOKENS

# ------------------------------------------------------------------ plan file


def _tokens(value: Any) -> Any:
    """'32k' -> 32768 (k = 1024, m = 1024**2); integers pass through to the strict int check."""
    if isinstance(value, str):
        from kvplan.deploy import parse_token_count

        try:
            return parse_token_count(value, "")
        except InputError:
            raise ValueError(f"{value!r} is not a whole number of tokens (e.g. 32768 or 32k)") from None
    return value


def _bytes(value: Any) -> Any:
    """'128KiB' -> 131072, '80GB' -> 80000000000; integers pass through (bytes are integers)."""
    if isinstance(value, str):
        try:
            return parse_bytes(value, "")
        except InputError:
            raise ValueError(f"{value!r} is not a size; write bytes or a number with a unit, e.g. 5GiB or 80GB") from None
    return value


TokenCount = Annotated[int, BeforeValidator(_tokens), Field(ge=1)]
ByteCount = Annotated[int, BeforeValidator(_bytes), Field(gt=0)]
ByteCountOrZero = Annotated[int, BeforeValidator(_bytes), Field(ge=0)]
Share = Annotated[float, Field(gt=0, le=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]
Text = Annotated[str, Field(min_length=1)]


class Budgets(BaseModel):
    """Limits for one deployment; each is optional, at least one is required."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    min_concurrent_sequences: Optional[PositiveInt] = None  # sequences of `context` tokens that fit
    max_kv_bytes_per_token: Optional[ByteCount] = None  # all layers, one copy, at kv_cache_dtype
    min_headroom_pct: Optional[Annotated[float, Field(lt=100)]] = None  # KV budget left at `batch`, %
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


class DeploymentEntry(BaseModel):
    """One deployment: estimate's flags as keys, plus `name` and `budgets`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Optional[Text] = None
    model: Text  # a catalog name or a path resolve_spec accepts (relative paths: to the plan's folder)
    gpu: Optional[Text] = None  # a catalog GPU or a GPU YAML file
    gpu_memory: Optional[ByteCount] = None
    gpu_bandwidth: Optional[PositiveFloat] = None  # GB/s
    usd_per_hour: Optional[Annotated[float, Field(ge=0)]] = None
    gpu_bf16_tflops: Optional[PositiveFloat] = None
    context: TokenCount  # required: every gate is at a stated context
    batch: PositiveInt = 1
    tp: PositiveInt = 1
    pp: PositiveInt = 1
    kv_cache_dtype: Text = "auto"
    state_dtype: Optional[Text] = None
    dtype: Optional[Literal[WEIGHT_DTYPES]] = None  # type: ignore[valid-type]
    engine: Literal["vllm", "ideal"] = "vllm"
    block_size: Optional[PositiveInt] = None
    gpu_memory_utilization: Share = DEFAULT_GPU_MEMORY_UTILIZATION
    activation_memory: Optional[ByteCountOrZero] = None
    non_torch_memory: Optional[ByteCountOrZero] = None
    max_num_batched_tokens: PositiveInt = DEFAULT_MAX_NUM_BATCHED_TOKENS
    bandwidth_efficiency: Optional[Share] = None
    compute_efficiency: Optional[Share] = None
    calibration: Optional[Text] = None  # a `kvplan measure --json` report
    prompt_tokens: Optional[TokenCount] = None
    budgets: Budgets

    @field_validator("kv_cache_dtype")
    @classmethod
    def _kv_format(cls, value: str) -> str:
        try:
            parse_format_pair(value, "bf16")  # syntax only; 'auto' is resolved against the model later
        except UnknownFormatError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("state_dtype")
    @classmethod
    def _state_format(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                parse_format(value)
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
        """`name`, or a name built from model, GPU, tp and context."""
        if self.name:
            return self.name
        where = f" on {self.gpu or 'custom'}" if self.has_gpu else ""
        parallel = f" tp{self.tp}" + (f" pp{self.pp}" if self.pp > 1 else "")
        return f"{self.model}{where}{parallel} @{self.context}"


class PlanFile(BaseModel):
    """The whole plan file."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    version: Literal[1] = 1
    deployments: tuple[DeploymentEntry, ...] = Field(strict=False)  # YAML gives a list

    @field_validator("deployments")
    @classmethod
    def _not_empty(cls, value: tuple) -> tuple:
        # an after-validator, not min_length: that one also fires when an entry is invalid
        if not value:
            raise ValueError("list at least one deployment")
        return value


def duplicate_labels(plan: PlanFile) -> list[tuple[int, int]]:
    """(index, index of the first entry with that label) for each repeated label."""
    first: dict[str, int] = {}
    out = []
    for i, entry in enumerate(plan.deployments):
        if entry.label in first:
            out.append((i, first[entry.label]))
        else:
            first.setdefault(entry.label, i)
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
    "max_decode_step_ms": BudgetRule("decode_step_ms", "<=", "ms"),
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

    @classmethod
    def from_plan(cls, plan: Any, kv_bytes_per_token: int) -> "Figures":
        """From a `kvplan.planner.Plan`."""
        return cls(
            model=plan.model,
            gpu=plan.gpu,
            kv_cache_dtype=plan.kv_cache_dtype,
            kv_bytes_per_token=kv_bytes_per_token,
            max_concurrent_sequences=plan.max_concurrent_sequences,
            headroom_pct=plan.headroom_pct,
            decode_step_ms=plan.decode_step_s * 1000,
            usd_per_million_output_tokens=plan.usd_per_million_output_tokens,
            usd_per_million_input_tokens=plan.usd_per_million_input_tokens,
            max_context_tokens=plan.max_context_tokens,
        )


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
    for key, limit in budgets.given().items():
        rule = BUDGETS[key]
        value = getattr(figures, rule.metric)
        if value is None:
            passed, note = False, rule.missing or "not computed"
        else:
            passed = value >= limit if rule.comparison == ">=" else value <= limit
            note = None
        out.append(BudgetResult(key, rule.metric, rule.comparison, value, limit, rule.unit, passed, line_of(key), note))
    return tuple(out)


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
    before: int
    after: int

    @property
    def delta(self) -> int:
        return self.after - self.before

    @property
    def delta_pct(self) -> Optional[float]:
        """The change in % of `before`; None when before is 0."""
        return None if self.before == 0 else self.delta / self.before * 100

    def increase_exceeds(self, pct: float) -> bool:
        """True when the figure grew by more than `pct` % (any growth from 0 counts)."""
        if self.delta <= 0:
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
