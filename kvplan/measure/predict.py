"""What a `kvplan measure` run should cost, from the spec alone: pure, no torch, no I/O.

The KV-cache bytes are never re-derived here: they come from the calculator
(`kvplan.model.layout.CacheLayout`) for the spec cut to the K layers that run. This
module adds what the measurement needs beside them:

- `RunArch`: the shapes the torch decoder is built with (attention dims, the MLA
  latent, the state layer's tensors, each layer's MLP width, which layer a
  KV-shared layer reads), with a note for every assumption that moves a number;
- the weight elements of that decoder, so weight bytes are known before any
  allocation and can be checked against the built model's parameters;
- the bytes one decode step reads (weights + the cache it attends over);
- prefill FLOPs for the compute-bound prediction;
- the memory a run needs (weights + cache + a stated activation margin), so the
  command can refuse before it allocates.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvplan.model.kinds import KINDS
from kvplan.model.layout import CacheEstimate, CacheLayout
from kvplan.errors import InputError
from kvplan.model.formats import KVFormat, KVFormatPair
from kvplan.model.spec import LayerKind, ModelSpec

# Layer kind -> the `layer_types` name that rebuilds it in a truncated spec (each kind's
# `layer_type`). MLA layers are written `full_attention`: the spec turns them back into
# MLA because kv_lora_rank is set (see ModelSpec.layer_kinds).
KIND_TO_LAYER_TYPE = {kind: rule.layer_type for kind, rule in KINDS.items()}

# DeepSeek-V2/V3 and Kimi-K2 all use qk_nope_head_dim = 128 (their config.json);
# used only when an MLA spec leaves it out (it moves weights and time, not KV bytes).
DEFAULT_QK_NOPE_HEAD_DIM = 128

# Prefill attention over a window runs in query blocks of this many tokens, so
# its mask and scores stay small at long contexts (see model.prefill_attention).
PREFILL_QUERY_BLOCK = 512

# Fixed scratch kept free beside weights, cache and activations: the cuBLAS
# workspace (up to 32 MiB per stream on Hopper, torch `getChosenWorkspaceSize`),
# masks, RoPE angles and the CUDA graph pool of one decode step.
SCRATCH_BYTES = 64 * 2**20


def truncate_spec(spec: ModelSpec, layers: int | None) -> ModelSpec:
    """The spec cut to its first `layers` layers, as a new validated spec (never mutated).

    `layer_types` is written out from `spec.layer_kinds`, so patterns, MLA and
    KV sharing survive the cut exactly as the full spec resolves them.
    """
    total = spec.num_hidden_layers
    if layers is None or layers == total:
        return spec
    if layers < 1 or layers > total:
        raise InputError(f"--layers {layers}: {spec.name} has {total} layers; use 1 to {total}")
    data = spec.model_dump()
    data.update(
        num_hidden_layers=layers,
        layer_types=tuple(KIND_TO_LAYER_TYPE[k] for k in spec.layer_kinds[:layers]),
        layer_pattern=None,
        num_kv_shared_layers=0,  # the shared layers, if any, are spelled out in layer_types
    )
    return ModelSpec.model_validate(data)


# ------------------------------------------------------------------ shapes


@dataclass(frozen=True, slots=True)
class MLADims:
    """Multi-head latent attention (DeepSeek-V2/V3) sizes, elements."""

    kv_lora_rank: int
    rope_dim: int  # qk_rope_head_dim: the decoupled RoPE key, shared by all heads
    nope_dim: int  # qk_nope_head_dim
    v_dim: int  # v_head_dim
    q_lora_rank: int | None

    @property
    def latent_dim(self) -> int:
        """Elements cached per token and layer: kv_lora_rank + qk_rope_head_dim."""
        return self.kv_lora_rank + self.rope_dim


@dataclass(frozen=True, slots=True)
class StateDims:
    """A state layer's fixed-size per-sequence state, and the layer that keeps it.

    variant: "mamba1" (Jamba), "mamba2" (mamba_n_heads set), "kda" (Kimi Delta Attention:
    d_inner = heads x head_dim, short convs over q, k and v, a (heads, head_dim, head_dim)
    delta-rule state), "shortconv" (LFM2: a gated depthwise conv over d_inner = hidden
    channels, no SSM state), or "recurrence" (a diagonal linear recurrence of
    `state_elements_per_layer` elements, for specs that give only the count).
    """

    variant: str
    d_inner: int
    d_state: int
    d_conv: int
    n_heads: int
    head_dim: int
    n_groups: int
    dt_rank: int

    @property
    def conv_dim(self) -> int:
        """Channels the causal conv runs over (Mamba-2: x, B and C)."""
        if self.variant == "mamba2":
            return self.d_inner + 2 * self.n_groups * self.d_state
        if self.variant == "kda":
            return 3 * self.d_inner  # q, k and v
        return self.d_inner

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sequence state tensors, name -> shape (the batch dimension goes in front)."""
        if self.variant == "recurrence":
            return {"state": (self.d_inner,)}
        conv = (self.conv_dim, self.d_conv - 1)  # the last d_conv - 1 inputs
        if self.variant == "mamba2":
            return {"conv_state": conv, "ssm_state": (self.n_heads, self.head_dim, self.d_state)}
        if self.variant == "kda":
            return {"conv_state": conv, "ssm_state": (self.n_heads, self.head_dim, self.head_dim)}
        if self.variant == "shortconv":
            return {"conv_state": conv}
        return {"conv_state": conv, "ssm_state": (self.d_inner, self.d_state)}

    @property
    def elements(self) -> int:
        total = 0
        for shape in self.state_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """One layer of the run: its kind, the layer whose cache it reads, its MLP width."""

    index: int
    kind: LayerKind
    attends_as: LayerKind | None  # the mask rule: own kind, or a KV-shared layer's donor kind
    donor: int | None  # KV-shared layers: the layer whose cache they read
    mlp_width: int


@dataclass(frozen=True, slots=True)
class RunArch:
    """The decoder `kvplan measure` builds: every size it allocates, from the spec."""

    spec: ModelSpec  # truncated to the layers that run
    layers: tuple[LayerPlan, ...]
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int  # standard attention K (and Q) head dim; MLA: 0
    v_head_dim: int  # standard attention V head dim; MLA: 0
    tie_word_embeddings: bool
    mla: MLADims | None
    state: StateDims | None
    notes: tuple[str, ...]

    def window(self, kind: LayerKind) -> int | None:
        return KINDS[kind].window(self.spec)


def _mlp_widths(spec: ModelSpec) -> tuple[list[int], list[str]]:
    """Per-layer SwiGLU width; MoE runs one dense MLP as wide as the active experts."""
    notes: list[str] = []
    hidden = spec.hidden_size
    dense = spec.intermediate_size
    if spec.num_experts_per_tok is not None:
        expert = spec.moe_intermediate_size or spec.intermediate_size
        if expert is None:
            raise InputError(
                f"{spec.name}: an MoE spec needs moe_intermediate_size or intermediate_size for kvplan measure"
            )
        shared = spec.n_shared_experts or 0
        active = expert * (spec.num_experts_per_tok + shared)
        first_dense = spec.first_k_dense_replace or 0
        moe = [spec.is_moe_layer(i) for i in range(spec.num_hidden_layers)]
        widths = [active if is_moe else (dense or active) for is_moe in moe]
        notes.append(
            f"MoE: each MoE layer runs one dense SwiGLU MLP as wide as its active experts "
            f"({spec.num_experts_per_tok} routed{f' + {shared} shared' if shared else ''} x {expert:,} = {active:,}), "
            "with no router; weights read per step are this model's, not the full expert set"
        )
        if first_dense:
            notes.append(f"MoE: the first {first_dense} layers are dense (first_k_dense_replace), width {dense or active:,}")
        if (spec.expert_layer_period or 1) > 1:
            notes.append(
                f"MoE: {sum(moe)} of {len(moe)} layers have experts (one in every {spec.expert_layer_period}, from layer "
                f"{spec.expert_layer_offset or 0}); the others are dense, width {dense or active:,}"
            )
        return widths, notes
    if dense is None:
        dense = 4 * hidden
        notes.append(f"intermediate_size is not in the spec: the MLP is 4 x hidden = {dense:,} wide")
    return [dense] * spec.num_hidden_layers, notes


def _state_dims(spec: ModelSpec) -> tuple[StateDims, str]:
    elements = spec.state_elements_per_layer_resolved
    assert elements is not None
    hidden = spec.hidden_size
    if spec.state_elements_per_layer is not None:
        dims = StateDims("recurrence", elements, 0, 1, 0, 0, 1, 0)
        return dims, (
            f"state layers: state_elements_per_layer given, so each runs a diagonal linear recurrence "
            f"with a state of {elements:,} elements (no conv)"
        )
    if spec.linear_num_heads is not None:
        H, d, K = spec.linear_num_heads, spec.linear_head_dim, spec.linear_conv_kernel_dim
        assert d is not None and K is not None
        return StateDims("kda", H * d, d, K, H, d, 1, 0), (
            f"state layers: Kimi Delta Attention ({H} heads x {d}, short convs of {K} over q, k and v), "
            "sequential delta-rule scan, a SiLU output gate in place of the gated norm"
        )
    if spec.conv_L_cache is not None:
        return StateDims("shortconv", hidden, 0, spec.conv_L_cache, 0, 0, 1, 0), (
            f"state layers: LFM2 short convolution (kernel {spec.conv_L_cache} over {hidden:,} channels, "
            "gated B x and C)"
        )
    assert spec.mamba_expand and spec.mamba_d_state and spec.mamba_d_conv
    d_inner = spec.mamba_expand * hidden
    # Mamba's default dt_rank = ceil(d_model / 16) (mamba_ssm Mamba.__init__, "auto")
    dt_rank = -(-hidden // 16)
    if spec.mamba_n_heads is not None:
        head_dim = spec.mamba_head_dim or d_inner // spec.mamba_n_heads
        if spec.mamba_n_heads * head_dim != d_inner:
            raise InputError(
                f"{spec.name}: kvplan measure needs mamba_n_heads x mamba_head_dim "
                f"({spec.mamba_n_heads} x {head_dim}) = mamba_expand x hidden_size ({d_inner})"
            )
        if spec.mamba_n_heads % spec.mamba_n_groups:
            raise InputError(
                f"{spec.name}: mamba_n_heads ({spec.mamba_n_heads}) must be a multiple of mamba_n_groups "
                f"({spec.mamba_n_groups})"
            )
        dims = StateDims(
            "mamba2", d_inner, spec.mamba_d_state, spec.mamba_d_conv, spec.mamba_n_heads, head_dim,
            spec.mamba_n_groups, dt_rank,
        )
        return dims, (
            f"state layers: Mamba-2 ({spec.mamba_n_heads} heads x {head_dim}, d_state {spec.mamba_d_state}, "
            f"d_conv {spec.mamba_d_conv}), sequential scan, no gated norm"
        )
    dims = StateDims("mamba1", d_inner, spec.mamba_d_state, spec.mamba_d_conv, 0, 0, 1, dt_rank)
    return dims, (
        f"state layers: Mamba-1 (d_inner {d_inner:,}, d_state {spec.mamba_d_state}, d_conv {spec.mamba_d_conv}, "
        f"dt_rank {dt_rank}), sequential scan"
    )


def _donors(spec: ModelSpec) -> list[int | None]:
    """For each KV-shared layer, the last earlier layer of the same underlying kind.

    Gemma-3n's rule (HF `Gemma3nTextAttention`): a shared layer reuses the KV of
    the last non-shared layer with the same layer type. A spec that writes
    `kv_shared` into layer_types names no type: the last owning layer is used.
    """
    kinds = spec.layer_kinds
    underlying = kinds
    if spec.num_kv_shared_layers:
        data = spec.model_dump()
        data["num_kv_shared_layers"] = 0
        underlying = ModelSpec.model_validate(data).layer_kinds
    donors: list[int | None] = []
    for i, kind in enumerate(kinds):
        if kind is not LayerKind.SHARED:
            donors.append(None)
            continue
        owning = [j for j in range(i) if KINDS[kinds[j]].has_kv]
        same = [j for j in owning if underlying[j] is underlying[i]]
        if not owning:
            raise InputError(f"{spec.name}: layer {i} shares KV but no earlier layer holds any")
        donors.append((same or owning)[-1])
    return donors


def build_arch(spec: ModelSpec) -> RunArch:
    """The decoder's shapes for an (already truncated) spec; InputError for what cannot run."""
    notes: list[str] = []
    mla = None
    head_dim = v_head_dim = 0
    # issue #13's per-layer attention that the torch decoder does not build yet: refused by the field's name
    if spec.has_layer_geometry:
        raise InputError(
            f"{spec.name}: full-attention layers with their own head size or KV heads (global_head_dim / "
            "num_global_key_value_heads) are not built by kvplan measure yet"
        )
    if spec.index_head_dim is not None:
        raise InputError(
            f"{spec.name}: the DeepSeek sparse-attention indexer (index_head_dim) is not built by kvplan measure yet"
        )
    if spec.is_mla:
        assert spec.kv_lora_rank is not None and spec.qk_rope_head_dim is not None
        nope = spec.qk_nope_head_dim
        if nope is None:
            nope = DEFAULT_QK_NOPE_HEAD_DIM
            notes.append(f"MLA: qk_nope_head_dim is not in the spec: {nope} assumed (DeepSeek-V2/V3)")
        v_dim = spec.v_head_dim or nope
        if spec.v_head_dim is None:
            notes.append(f"MLA: v_head_dim is not in the spec: qk_nope_head_dim ({nope}) assumed")
        mla = MLADims(spec.kv_lora_rank, spec.qk_rope_head_dim, nope, v_dim, spec.q_lora_rank)
        notes.append(
            f"MLA: caches the {spec.kv_lora_rank}-element latent (after kv_a_layernorm) + the "
            f"{spec.qk_rope_head_dim}-element RoPE key; prefill decompresses with kv_b_proj, "
            "decode attends in the latent space (kv_b_proj absorbed into Q and the output)"
        )
        if LayerKind.SHARED in spec.layer_kinds:
            raise InputError(f"{spec.name}: KV-shared layers on an MLA model are not supported by kvplan measure")
    else:
        head_dim = spec.k_head_dim
        v_head_dim = spec.v_head_dim_resolved
    state = None
    if LayerKind.MLP in spec.layer_kinds:
        raise InputError(
            f"{spec.name}: kvplan measure cannot build MLP / MoE-only layers (Nemotron-H's '-' and 'E' blocks) yet; "
            "size it with `kvplan estimate`"
        )
    if LayerKind.STATE in spec.layer_kinds:
        if spec.linear_num_value_heads is not None:
            raise InputError(
                f"{spec.name}: kvplan measure cannot build Gated DeltaNet (linear_attention) state layers yet; "
                "size it with `kvplan estimate`"
            )
        if spec.mamba_d_inner is not None:
            raise InputError(
                f"{spec.name}: kvplan measure builds Mamba layers mamba_expand x hidden_size wide, not "
                f"mamba_d_inner ({spec.mamba_d_inner}); size it with `kvplan estimate`"
            )
        state, note = _state_dims(spec)
        notes.append(note)
    widths, mlp_notes = _mlp_widths(spec)
    notes.extend(mlp_notes)
    donors = _donors(spec)
    plans = []
    for i, kind in enumerate(spec.layer_kinds):
        donor = donors[i]
        attends_as = None
        if kind is LayerKind.SHARED:
            assert donor is not None
            attends_as = spec.layer_kinds[donor]
        elif KINDS[kind].has_kv:
            attends_as = kind
        plans.append(LayerPlan(i, kind, attends_as, donor, widths[i]))
    if LayerKind.SHARED in spec.layer_kinds:
        notes.append("KV-shared layers project Q only and attend over their donor layer's cache")
    kv_heads = spec.num_key_value_heads
    assert kv_heads is not None
    return RunArch(
        spec=spec,
        layers=tuple(plans),
        hidden=spec.hidden_size,
        vocab=spec.vocab_size,
        heads=spec.num_attention_heads,
        kv_heads=1 if spec.is_mla else kv_heads,
        head_dim=head_dim,
        v_head_dim=v_head_dim,
        tie_word_embeddings=spec.tie_word_embeddings,
        mla=mla,
        state=state,
        notes=tuple(notes),
    )


# ------------------------------------------------------------------ weights


@dataclass(frozen=True, slots=True)
class LayerWeights:
    """Elements of one layer's parameters: `matmul` in projections, `other` in norms, conv, biases."""

    matmul: int
    other: int

    @property
    def total(self) -> int:
        return self.matmul + self.other


def layer_weights(arch: RunArch, layer: LayerPlan) -> LayerWeights:
    """Parameter elements of one layer exactly as `model.Block` allocates them."""
    h, H = arch.hidden, arch.heads
    matmul = 3 * h * layer.mlp_width  # SwiGLU: gate, up, down
    other = 2 * h  # input and post-attention RMSNorm weights
    kind = layer.kind
    if kind is LayerKind.SHARED:
        matmul += h * H * arch.head_dim + H * arch.v_head_dim * h  # q_proj, o_proj only
    elif kind is LayerKind.MLA:
        m = arch.mla
        assert m is not None
        qk = m.nope_dim + m.rope_dim
        if m.q_lora_rank:
            matmul += h * m.q_lora_rank + m.q_lora_rank * H * qk  # q_a_proj, q_b_proj
            other += m.q_lora_rank  # q_a_layernorm
        else:
            matmul += h * H * qk  # q_proj
        matmul += h * m.latent_dim  # kv_a_proj_with_mqa
        other += m.kv_lora_rank  # kv_a_layernorm
        matmul += m.kv_lora_rank * H * (m.nope_dim + m.v_dim)  # kv_b_proj
        matmul += H * m.v_dim * h  # o_proj
    elif kind is LayerKind.STATE:
        s = arch.state
        assert s is not None
        if s.variant == "recurrence":
            matmul += 2 * h * s.d_inner  # in_proj, out_proj
            other += s.d_inner  # decay
        elif s.variant == "mamba2":
            matmul += h * (s.d_inner + s.conv_dim + s.n_heads) + s.d_inner * h  # in_proj, out_proj
            other += s.conv_dim * s.d_conv + s.conv_dim + 3 * s.n_heads  # conv w+b, A_log, D, dt_bias
        elif s.variant == "kda":
            # in_proj -> q, k, v (conv_dim), the decay f (d_inner), beta (H), the output gate (d_inner); out_proj
            matmul += h * (s.conv_dim + 2 * s.d_inner + s.n_heads) + s.d_inner * h
            other += s.conv_dim * s.d_conv + s.n_heads + s.d_inner  # conv weight (no bias), A_log, dt_bias
        elif s.variant == "shortconv":
            matmul += h * 3 * s.d_inner + s.d_inner * h  # in_proj -> B, C, x; out_proj
            other += s.d_inner * s.d_conv  # conv weight (no bias: conv_bias false in every LFM2)
        else:
            matmul += h * 2 * s.d_inner + s.d_inner * h  # in_proj, out_proj
            matmul += s.d_inner * (s.dt_rank + 2 * s.d_state) + s.dt_rank * s.d_inner  # x_proj, dt_proj
            other += s.d_inner * s.d_conv + s.d_inner  # conv weight + bias
            other += s.d_inner + s.d_inner * s.d_state + s.d_inner  # dt_proj bias, A_log, D
    else:
        Hkv = arch.kv_heads
        matmul += h * H * arch.head_dim + h * Hkv * (arch.head_dim + arch.v_head_dim) + H * arch.v_head_dim * h
    return LayerWeights(matmul, other)


@dataclass(frozen=True, slots=True)
class WeightCount:
    """Parameter elements of the run's decoder."""

    embedding: int  # vocab x hidden
    layers: int
    final_norm: int
    lm_head: int  # 0 when tied to the embedding
    layer_matmul: int  # of `layers`: elements in projections (2 FLOPs per token each)

    @property
    def total(self) -> int:
        return self.embedding + self.layers + self.final_norm + self.lm_head


def weight_count(arch: RunArch) -> WeightCount:
    per_layer = [layer_weights(arch, layer) for layer in arch.layers]
    head = 0 if arch.tie_word_embeddings else arch.vocab * arch.hidden
    return WeightCount(
        embedding=arch.vocab * arch.hidden,
        layers=sum(w.total for w in per_layer),
        final_norm=arch.hidden,
        lm_head=head,
        layer_matmul=sum(w.matmul for w in per_layer),
    )


def decode_weight_bytes_read(arch: RunArch, batch: int, param_bytes: int) -> int:
    """Weight bytes one decode step reads: every layer's parameters, the final norm,
    the whole LM head, and only the `batch` embedding rows it gathers."""
    w = weight_count(arch)
    head = arch.vocab * arch.hidden  # the tied embedding is read in full as the LM head
    return (w.layers + w.final_norm + head + batch * arch.hidden) * param_bytes


def kv_bytes_read_per_step(arch: RunArch, est: CacheEstimate) -> int:
    """Cache bytes one decode step reads: the whole pre-allocated cache (decode attends
    over every slot with a mask, the static shape CUDA graphs need), state read once,
    plus each KV-shared layer reading its donor's cache again."""
    per_layer = {row.kind: row.bytes_total // row.layers for row in est.by_kind if row.layers}
    extra = 0
    for layer in arch.layers:
        if layer.kind is LayerKind.SHARED:
            assert layer.attends_as is not None
            extra += per_layer.get(layer.attends_as.value, 0)
    return est.kv_bytes_total + extra


# ------------------------------------------------------------------ decode FLOPs


def decode_flops(arch: RunArch, total_tokens: int, batch: int) -> int:
    """FLOPs of one decode step: 2 per weight per sequence in the projections and the LM head,
    QK and PV over every slot of the pre-allocated cache (decode attends over all of them with a
    mask), a KV-shared layer over its donor's slots. MLA decodes in the latent space (W_UK and
    W_UV absorbed, model.MLAttention.decode): a score is (kv_lora_rank + rope) long, a value
    kv_lora_rank. The state layers' elementwise work is left out (not matmul work)."""
    w = weight_count(arch)
    flops = 2 * batch * (w.layer_matmul + arch.vocab * arch.hidden)
    for layer in arch.layers:
        if layer.attends_as is None:
            continue
        if arch.mla is not None:
            qk, v = arch.mla.latent_dim, arch.mla.kv_lora_rank
        else:
            qk, v = arch.head_dim, arch.v_head_dim
        slots = cache_slots(arch, layer.attends_as, total_tokens)
        flops += 2 * batch * arch.heads * slots * (qk + v)
    return flops


def widest_projection(arch: RunArch) -> tuple[int, int]:
    """(in, out) features of the model's widest projection: hidden -> the widest MLP (gate/up),
    the shape the GEMV and GEMM probes time; most of a layer's weights are in its MLP."""
    return arch.hidden, max([layer.mlp_width for layer in arch.layers] + [arch.hidden])


# ------------------------------------------------------------------ prefill FLOPs


def attention_pairs(kind: LayerKind, context: int, window: int | None) -> int:
    """(query, key) pairs a prefill of `context` tokens scores in one head (causal, windowed: the kind's rule)."""
    return KINDS[kind].prefill_pairs(context, window)


def prefill_attention_dims(arch: RunArch) -> tuple[int, int, int]:
    """(QK head size, V head size, V head size the kernel runs) of a prefill's attention: MLA attends
    decompressed, nope + rope long, with V padded to the QK size for SDPA (model.MLAttention.prefill)."""
    if arch.mla is not None:
        qk = arch.mla.nope_dim + arch.mla.rope_dim
        return qk, arch.mla.v_dim, max(qk, arch.mla.v_dim)
    return arch.head_dim, arch.v_head_dim, arch.v_head_dim


def prefill_attention_flops(arch: RunArch, context: int, batch: int) -> int:
    """QK and PV FLOPs of a prefill over the causal (windowed) pairs each attending layer scores."""
    qk, v, _ = prefill_attention_dims(arch)
    flops = 0
    for layer in arch.layers:
        if layer.attends_as is None:
            continue
        pairs = attention_pairs(layer.attends_as, context, arch.window(layer.attends_as))
        flops += 2 * batch * arch.heads * pairs * (qk + v)
    return flops


def prefill_flops(arch: RunArch, context: int, batch: int) -> int:
    """FLOPs of a prefill: 2 per weight per token in the projections, QK and PV over the
    causal (windowed) pairs, and the LM head for the last token only. The state scans'
    elementwise work is left out (not matmul work)."""
    w = weight_count(arch)
    return 2 * batch * context * w.layer_matmul + 2 * batch * arch.hidden * arch.vocab + prefill_attention_flops(
        arch, context, batch)


# ------------------------------------------------------------------ memory


def activation_bytes(arch: RunArch, context: int, batch: int, act_bytes: int) -> int:
    """A stated margin for prefill activations, bytes.

    2 x batch x context x dtype bytes x (4 x hidden for the residual stream and norms
    + the widest layer's intermediates), the 2 for fp32 temporaries and allocator
    slack; + fp32 scores of one query block of windowed attention; + the last
    token's fp32 logits; + SCRATCH_BYTES.
    """
    H, Hkv = arch.heads, arch.kv_heads
    widest = 0
    for layer in arch.layers:
        width = 3 * layer.mlp_width
        if layer.kind is LayerKind.MLA and arch.mla is not None:
            m = arch.mla
            qk = m.nope_dim + m.rope_dim
            width = max(width, 2 * H * qk + m.latent_dim + H * (m.nope_dim + m.v_dim) + 2 * H * m.v_dim)
        elif layer.kind is LayerKind.STATE and arch.state is not None:
            s = arch.state
            width = max(width, 4 * (s.d_inner + s.conv_dim + s.n_heads) + 2 * s.d_state)
        elif layer.attends_as is not None:
            D, Dv = arch.head_dim, arch.v_head_dim
            width = max(width, H * D + Hkv * (D + Dv) + H * (D + Dv) + H * Dv)
        widest = max(widest, width)
    total = 2 * batch * context * act_bytes * (4 * arch.hidden + widest)
    windows = [arch.window(l.attends_as) for l in arch.layers if l.attends_as is not None and KINDS[l.attends_as].windowed]
    windows = [w for w in windows if w is not None and w < context]
    if windows:
        block = min(PREFILL_QUERY_BLOCK, context)
        total += batch * H * block * (block + max(windows)) * 4
    total += batch * arch.vocab * 4 + SCRATCH_BYTES
    return total


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """Bytes a run needs at its largest (context, batch), before anything is allocated."""

    weights_bytes: int
    kv_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.activation_bytes


def cache_layout(arch: RunArch, kv_format: KVFormatPair, state_format: KVFormat) -> CacheLayout:
    """The calculator's layout for the run: unpaged (block 1), one rank, state in the run dtype."""
    return CacheLayout(arch.spec, kv_format, block_size=1, state_format=state_format)


def memory_need(
    arch: RunArch,
    kv_format: KVFormatPair,
    state_format: KVFormat,
    param_bytes: int,
    total_tokens: list[int],
    batches: list[int],
) -> MemoryNeed:
    """The largest cache + activations over the sweep, with the weights, bytes."""
    layout = cache_layout(arch, kv_format, state_format)
    weights = weight_count(arch).total * param_bytes
    worst = max(
        ((layout.at(t, b).kv_bytes_total, activation_bytes(arch, t, b, param_bytes)) for t in total_tokens for b in batches),
        key=sum,
    )
    return MemoryNeed(weights, worst[0], worst[1])


def largest_fitting_layers(
    spec: ModelSpec,
    kv_format: KVFormatPair,
    state_format: KVFormat,
    param_bytes: int,
    total_tokens: list[int],
    batches: list[int],
    available_bytes: int,
) -> int:
    """The most leading layers of `spec` whose run fits in `available_bytes` (0 if none)."""
    lo, hi = 0, spec.num_hidden_layers
    while lo < hi:  # need grows with layers: bisect for the last K that fits
        mid = (lo + hi + 1) // 2
        arch = build_arch(truncate_spec(spec, mid))
        need = memory_need(arch, kv_format, state_format, param_bytes, total_tokens, batches)
        if need.total_bytes <= available_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def cache_slots(arch: RunArch, kind: LayerKind, total_tokens: int) -> int:
    """Token slots one layer's cache holds for `total_tokens`: the calculator's rule."""
    return KINDS[kind].tokens_held(total_tokens, arch.window(kind))
