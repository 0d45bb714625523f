"""A decoder in torch built from a `RunArch`, with random weights from a seed.

Embeddings, the layers (every attention kind and state layers), RMSNorm, a SwiGLU
MLP and an LM head. Two entry points:

- `prefill(tokens, caches)`: the prompt from position 0, attending over its own
  fresh K/V (as engines do) and writing the caches; with `caches=None` it is the
  plain recomputation the cached decode is checked against.
- `decode(tokens, pos, caches)`: one token per sequence at position `pos` (a (1,)
  tensor), attending over the whole pre-allocated cache with a mask. Static shapes
  and no host syncs, so a step can be captured in a CUDA graph.

Weights: uniform with standard deviation 1/sqrt(fan_in) (embeddings: 1), norms 1
(on the CPU, tensors above CPU_RANDOM_BLOCK elements repeat one random block).
RoPE: rotate-half over the largest even prefix of the head, theta 10,000; the
base changes values, not costs. Softmax and the state recurrences run in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kvplan.measure.cache import KVCache, LatentCache, LayerCache, StateCache
from kvplan.measure.predict import PREFILL_QUERY_BLOCK, LayerPlan, RunArch
from kvplan.model.kinds import KINDS
from kvplan.model.spec import LayerKind

ROPE_THETA = 10_000.0
RMS_EPS = 1e-6


# On the CPU, tensors above this many elements repeat one random block of this size:
# an RNG fill runs at ~120M elements/s on 2 cores (10.5 s for Llama-3.1-8B with
# --layers 1, torch 2.13), a copy at memory speed. Odd, so a repeat falls mid-row and
# no two rows of a power-of-two-wide matrix are equal. The bytes read are the same.
CPU_RANDOM_BLOCK = (1 << 24) + 1


class _Init:
    """Random parameters on the target device from the default generator, seeded.

    The caller seeds it inside `torch.random.fork_rng` (see `Decoder`), so the
    process's own random state is left as it was. The default generator, not a
    private `torch.Generator`: on the CPU it fills ~2x faster.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.allocated: list[int] = []  # bytes of each parameter, in allocation order

    def _empty(self, *shape: int) -> torch.Tensor:
        t = torch.empty(*shape, device=self.device, dtype=self.dtype)
        self.allocated.append(t.untyped_storage().nbytes())
        return t

    def uniform(self, *shape: int, std: float, mean: float = 0.0) -> nn.Parameter:
        # uniform(-a, a) has std a / sqrt(3)
        t = self._empty(*shape)
        a = std * math.sqrt(3.0)
        n = t.numel()
        if self.device.type == "cpu" and n > CPU_RANDOM_BLOCK:
            block = torch.empty(CPU_RANDOM_BLOCK, dtype=self.dtype).uniform_(mean - a, mean + a)
            flat = t.view(-1)
            full, rest = divmod(n, CPU_RANDOM_BLOCK)
            flat[: full * CPU_RANDOM_BLOCK].view(full, CPU_RANDOM_BLOCK).copy_(block.expand(full, -1))
            flat[full * CPU_RANDOM_BLOCK :].copy_(block[:rest])
        else:
            t.uniform_(mean - a, mean + a)
        return nn.Parameter(t, requires_grad=False)

    def linear(self, out_features: int, in_features: int) -> nn.Parameter:
        return self.uniform(out_features, in_features, std=in_features**-0.5)

    def ones(self, n: int) -> nn.Parameter:
        return nn.Parameter(self._empty(n).fill_(1), requires_grad=False)


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
    return xf.to(x.dtype) * weight


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x (..., S, D) at absolute `positions` (S,)."""
    d = x.shape[-1] // 2 * 2
    half = d // 2
    if half == 0:
        return x
    inv_freq = ROPE_THETA ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (S, half)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half].float(), x[..., half:d].float()
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
    return torch.cat([out, x[..., d:]], dim=-1) if d < x.shape[-1] else out


def prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: LayerKind, window: int | None, scale: float
) -> torch.Tensor:
    """Causal attention of a prompt from position 0: q (B, H, S, Dq), k/v (B, H_kv, S, ·).

    Full (and windows the prompt fits in) use SDPA's causal kernel. A window shorter
    than the prompt runs in query blocks of PREFILL_QUERY_BLOCK over the keys they
    can see, so the mask stays (block x (block + W)) at any context.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    S = q.shape[2]
    if window is None or S <= window:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    rule = KINDS[kind]
    outs = []
    for i0 in range(0, S, PREFILL_QUERY_BLOCK):
        i1 = min(S, i0 + PREFILL_QUERY_BLOCK)
        lo = rule.first_key(i0, window)  # the block's first query sees no key before this
        qi = torch.arange(i0, i1, device=q.device)[:, None]
        kj = torch.arange(lo, i1, device=q.device)[None, :]
        allowed = (kj <= qi) & rule.in_window(qi, kj, window)
        outs.append(
            F.scaled_dot_product_attention(q[:, :, i0:i1], k[:, :, lo:i1], v[:, :, lo:i1], attn_mask=allowed, scale=scale)
        )
    return torch.cat(outs, dim=2)


def cached_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """One decode query per sequence over a whole cache: q (B, H, 1, D), k (B, H_kv, T, D),
    v (B, H_kv, T, D_v), mask (T,). Grouped, so K/V are read once, not repeated per head."""
    B, H, _, D = q.shape
    kv_heads = k.shape[1]
    qg = q.reshape(B, kv_heads, H // kv_heads, D)  # head h = kv_head * groups + g, as repeat_interleave
    scores = torch.matmul(qg, k.to(q.dtype).transpose(-1, -2)).float() * scale  # (B, H_kv, G, T)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(q.dtype)
    out = torch.matmul(probs, v.to(q.dtype))  # (B, H_kv, G, D_v)
    return out.reshape(B, H, 1, out.shape[-1])


# ------------------------------------------------------------------ mixers


class Attention(nn.Module):
    """MHA / GQA / MQA with full, sliding or chunked masks; KV-shared when `owns_kv` is False."""

    def __init__(self, arch: RunArch, layer: LayerPlan, init: _Init) -> None:
        super().__init__()
        h, H, Hkv, D, Dv = arch.hidden, arch.heads, arch.kv_heads, arch.head_dim, arch.v_head_dim
        self.heads, self.kv_heads, self.head_dim, self.v_head_dim = H, Hkv, D, Dv
        self.owns_kv = KINDS[layer.kind].holds_anything  # a KV-shared layer keeps nothing of its own
        assert layer.attends_as is not None
        self.kind = layer.attends_as
        self.window = arch.window(self.kind)
        self.scale = D**-0.5
        self.q_proj = init.linear(H * D, h)
        if self.owns_kv:
            self.k_proj = init.linear(Hkv * D, h)
            self.v_proj = init.linear(Hkv * Dv, h)
        self.o_proj = init.linear(h, H * Dv)

    def _q(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        return rope(F.linear(x, self.q_proj).view(B, S, self.heads, self.head_dim).transpose(1, 2), positions)

    def _kv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = x.shape
        k = rope(F.linear(x, self.k_proj).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2), positions)
        v = F.linear(x, self.v_proj).view(B, S, self.kv_heads, self.v_head_dim).transpose(1, 2)
        return k, v

    def prefill(self, x, positions, cache, shared):
        B, S, _ = x.shape
        q = self._q(x, positions)
        if self.owns_kv:
            k, v = self._kv(x, positions)
            if cache is not None:
                cache.update(positions, k, v)
        else:
            k, v = shared
        out = prefill_attention(q, k, v, self.kind, self.window, self.scale)
        return F.linear(out.transpose(1, 2).reshape(B, S, -1), self.o_proj), (k, v)

    def decode(self, x, pos, cache: KVCache):
        B = x.shape[0]
        q = self._q(x, pos)
        if self.owns_kv:
            k, v = self._kv(x, pos)
            cache.update(pos, k, v)
        out = cached_attention(q, cache.k, cache.v, cache.mask(pos), self.scale)
        return F.linear(out.transpose(1, 2).reshape(B, 1, -1), self.o_proj)


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3): caches the normed latent + RoPE key."""

    def __init__(self, arch: RunArch, layer: LayerPlan, init: _Init) -> None:
        super().__init__()
        m = arch.mla
        assert m is not None
        h, H = arch.hidden, arch.heads
        self.m, self.heads = m, H
        qk = m.nope_dim + m.rope_dim
        self.scale = qk**-0.5
        if m.q_lora_rank:
            self.q_a_proj = init.linear(m.q_lora_rank, h)
            self.q_a_layernorm = init.ones(m.q_lora_rank)
            self.q_b_proj = init.linear(H * qk, m.q_lora_rank)
        else:
            self.q_proj = init.linear(H * qk, h)
        self.kv_a_proj_with_mqa = init.linear(m.latent_dim, h)
        self.kv_a_layernorm = init.ones(m.kv_lora_rank)
        self.kv_b_proj = init.linear(H * (m.nope_dim + m.v_dim), m.kv_lora_rank)
        self.o_proj = init.linear(h, H * m.v_dim)

    def _q(self, x, positions):
        B, S, _ = x.shape
        if self.m.q_lora_rank:
            q = F.linear(rms_norm(F.linear(x, self.q_a_proj), self.q_a_layernorm), self.q_b_proj)
        else:
            q = F.linear(x, self.q_proj)
        q = q.view(B, S, self.heads, -1).transpose(1, 2)  # (B, H, S, nope + rope)
        q_nope, q_rope = q.split([self.m.nope_dim, self.m.rope_dim], dim=-1)
        return q_nope, rope(q_rope, positions)

    def _latent(self, x, positions):
        """(B, S, r + d_rope): the kv_a_layernorm'd latent and the RoPE'd shared key."""
        kv = F.linear(x, self.kv_a_proj_with_mqa)
        c, k_rope = kv.split([self.m.kv_lora_rank, self.m.rope_dim], dim=-1)
        return torch.cat([rms_norm(c, self.kv_a_layernorm), rope(k_rope.unsqueeze(1), positions).squeeze(1)], dim=-1)

    def prefill(self, x, positions, cache, shared):
        B, S, _ = x.shape
        m, H = self.m, self.heads
        q_nope, q_rope = self._q(x, positions)
        latent = self._latent(x, positions)
        if cache is not None:
            cache.update(positions, latent)
        c, k_rope = latent.split([m.kv_lora_rank, m.rope_dim], dim=-1)
        kv = F.linear(c, self.kv_b_proj).view(B, S, H, m.nope_dim + m.v_dim).transpose(1, 2)
        k_nope, v = kv.split([m.nope_dim, m.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rope.unsqueeze(1).expand(B, H, S, m.rope_dim)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        qk = m.nope_dim + m.rope_dim
        if m.v_dim < qk:  # pad V to the QK head size so SDPA's flash kernel applies (as vLLM does for MLA)
            v = F.pad(v, (0, qk - m.v_dim))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)[..., : m.v_dim]  # (B, H, S, v)
        return F.linear(out.transpose(1, 2).reshape(B, S, -1), self.o_proj), None

    def decode(self, x, pos, cache: LatentCache):
        B = x.shape[0]
        m, H = self.m, self.heads
        q_nope, q_rope = self._q(x, pos)  # (B, H, 1, ·)
        cache.update(pos, self._latent(x, pos))
        latent = cache.latent.to(x.dtype)  # (B, T, r + d_rope): one latent shared by every head
        c, k_rope = latent[..., : m.kv_lora_rank], latent[..., m.kv_lora_rank :]
        w = self.kv_b_proj.view(H, m.nope_dim + m.v_dim, m.kv_lora_rank)
        w_uk, w_uv = w[:, : m.nope_dim], w[:, m.nope_dim :]  # (H, nope, r), (H, v, r)
        q_latent = torch.einsum("bhsn,hnr->bhsr", q_nope, w_uk)  # absorb W_UK into the query
        # The heads are the rows of one (H x r) @ (r x T) product per sequence, as MQA over the latent:
        # a head-broadcast 4-D matmul takes torch's slow batched path on CPU (about 100x slower in bf16).
        scores = torch.bmm(q_latent.reshape(B, H, -1), c.transpose(1, 2)) + torch.bmm(
            q_rope.reshape(B, H, -1), k_rope.transpose(1, 2))
        scores = scores.float() * self.scale  # (B, H, T)
        probs = scores.masked_fill(~cache.mask(pos), float("-inf")).softmax(dim=-1).to(x.dtype)
        out_latent = torch.bmm(probs, c).unsqueeze(2)  # (B, H, 1, r)
        out = torch.einsum("bhsr,hvr->bhsv", out_latent, w_uv)  # W_UV applied after attention
        return F.linear(out.transpose(1, 2).reshape(B, 1, -1), self.o_proj)


class StateLayer(nn.Module):
    """A fixed-state layer: Mamba-1, Mamba-2, or a diagonal linear recurrence.

    The prefill runs the same per-token step as decode (a sequential scan) and
    rounds the state to the cache dtype after every token, as decode stores it, so
    the two agree to rounding.
    """

    reduce = None  # tensor-parallel: the sum over ranks of x_proj's partial products (kvplan.measure.parallel)

    def __init__(self, arch: RunArch, layer: LayerPlan, init: _Init) -> None:
        super().__init__()
        s = arch.state
        assert s is not None
        self.s = s
        h = arch.hidden
        if s.variant == "recurrence":
            self.in_proj = init.linear(s.d_inner, h)
            self.decay = init.uniform(s.d_inner, std=0.5, mean=2.0)  # sigmoid(2) ~ 0.88: slow decay
            self.out_proj = init.linear(h, s.d_inner)
            return
        if s.variant == "shortconv":  # LFM2 Lfm2ShortConv: in_proj -> B, C, x; conv over B x; C gates it
            self.in_proj = init.linear(3 * s.d_inner, h)
            self.conv_weight = init.uniform(s.conv_dim, s.d_conv, std=s.d_conv**-0.5)
            self.out_proj = init.linear(h, s.d_inner)
            return
        if s.variant == "kda":  # Kimi Delta Attention: q, k, v (conv), decay f, beta, output gate z
            self.in_proj = init.linear(s.conv_dim + s.d_inner + s.n_heads + s.d_inner, h)
            self.conv_weight = init.uniform(s.conv_dim, s.d_conv, std=s.d_conv**-0.5)
            self.A_log = init.uniform(s.n_heads, std=0.3, mean=0.0)
            self.dt_bias = init.uniform(s.d_inner, std=0.3, mean=-2.0)
            self.out_proj = init.linear(h, s.d_inner)
            return
        if s.variant == "mamba2":
            self.in_proj = init.linear(s.d_inner + s.conv_dim + s.n_heads, h)  # z, xBC, dt
        else:
            self.in_proj = init.linear(2 * s.d_inner, h)  # x, z
        self.conv_weight = init.uniform(s.conv_dim, s.d_conv, std=s.d_conv**-0.5)
        self.conv_bias = init.uniform(s.conv_dim, std=0.1)
        if s.variant == "mamba2":
            n = s.n_heads
            self.A_log = init.uniform(n, std=0.3, mean=0.0)
            self.D = init.ones(n)
            self.dt_bias = init.uniform(n, std=0.3, mean=-2.0)
        else:
            self.x_proj = init.linear(s.dt_rank + 2 * s.d_state, s.d_inner)
            self.dt_proj = init.linear(s.d_inner, s.dt_rank)
            self.dt_proj_bias = init.uniform(s.d_inner, std=0.3, mean=-2.0)
            self.A_log = init.uniform(s.d_inner, s.d_state, std=0.3, mean=0.0)
            self.D = init.ones(s.d_inner)
        self.out_proj = init.linear(h, s.d_inner)

    def _fp32_params(self) -> dict[str, torch.Tensor]:
        """The step's parameters in fp32, converted once per scan, not once per token."""
        names = {"shortconv": ("conv_weight",), "kda": ("conv_weight", "A_log", "dt_bias")}.get(self.s.variant) or (
            ("decay",) if self.s.variant == "recurrence" else (
            ("conv_weight", "conv_bias", "A_log", "D", "dt_bias") if self.s.variant == "mamba2"
            else ("conv_weight", "conv_bias", "x_proj", "dt_proj", "dt_proj_bias", "A_log", "D")))
        p = {n: getattr(self, n).float() for n in names}
        if self.s.variant == "kda":
            p["A"] = torch.exp(p.pop("A_log"))  # KimiLinearForgetGate: decay rate exp(A_log), per head
            return p
        if "A_log" in p:
            p["A"] = -torch.exp(p.pop("A_log"))
        if "decay" in p:
            p["decay"] = torch.sigmoid(p["decay"])
        return p

    # one token: inputs (B, ·) fp32; state in its cache dtype; returns (new states fp32, y fp32)
    def _step(
        self, p: dict[str, torch.Tensor], states: dict[str, torch.Tensor], u: torch.Tensor, dt_in: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        s = self.s
        if s.variant == "recurrence":
            a = p["decay"]
            new = a * states["state"].float() + (1 - a) * u
            return {"state": new}, new
        window = torch.cat([states["conv_state"].float(), u.unsqueeze(-1)], dim=-1)  # (B, conv_dim, d_conv)
        new_conv = window[..., 1:]
        if s.variant == "shortconv":  # causal_conv1d_update without activation (Lfm2ShortConv)
            return {"conv_state": new_conv}, (window * p["conv_weight"]).sum(-1)
        if s.variant == "kda":
            return self._kda_step(p, states, new_conv, F.silu((window * p["conv_weight"]).sum(-1)), dt_in)
        xc = F.silu((window * p["conv_weight"]).sum(-1) + p["conv_bias"])
        h = states["ssm_state"].float()
        if s.variant == "mamba2":
            B = u.shape[0]
            x, Bm, Cm = xc.split([s.d_inner, s.n_groups * s.d_state, s.n_groups * s.d_state], dim=-1)
            per_group = s.n_heads // s.n_groups
            Bm = Bm.view(B, s.n_groups, s.d_state).repeat_interleave(per_group, dim=1)  # (B, H, N)
            Cm = Cm.view(B, s.n_groups, s.d_state).repeat_interleave(per_group, dim=1)
            x = x.view(B, s.n_heads, s.head_dim)  # (B, H, P)
            assert dt_in is not None
            dt = F.softplus(dt_in + p["dt_bias"])  # (B, H)
            dA = torch.exp(dt * p["A"])
            h = dA[..., None, None] * h + (dt[..., None] * x)[..., None] * Bm[:, :, None, :]  # (B, H, P, N)
            y = (h * Cm[:, :, None, :]).sum(-1) + p["D"][:, None] * x
            return {"conv_state": new_conv, "ssm_state": h}, y.reshape(B, -1)
        dbc = F.linear(xc, p["x_proj"])
        if self.reduce is not None:  # tensor-parallel: x_proj is row-parallel (vLLM MambaMixer), summed over ranks
            dbc = self.reduce(dbc)
        dt, Bm, Cm = dbc.split([s.dt_rank, s.d_state, s.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, p["dt_proj"], p["dt_proj_bias"]))  # (B, d_inner)
        dA = torch.exp(dt[..., None] * p["A"])  # (B, d_inner, N)
        h = dA * h + (dt * xc)[..., None] * Bm[:, None, :]
        y = (h * Cm[:, None, :]).sum(-1) + p["D"] * xc
        return {"conv_state": new_conv, "ssm_state": h}, y

    def _kda_step(self, p, states, new_conv, xc, gates):
        """One token of Kimi Delta Attention (transformers 5.25 recurrent_kimi_delta_attention): q, k L2-normed,
        q scaled by head_dim^-0.5; the state decays per channel by exp(g), g = -exp(A_log) softplus(f + dt_bias)
        (KimiLinearForgetGate); the delta rule writes beta (v - S^T k) along k; the output is S^T q."""
        s = self.s
        B, H, d = xc.shape[0], s.n_heads, s.head_dim
        q, k, v = (t.reshape(B, H, d) for t in xc.split(s.d_inner, dim=-1))
        q = F.normalize(q, dim=-1, eps=1e-6) * d**-0.5
        k = F.normalize(k, dim=-1, eps=1e-6)
        f, beta = gates.split([s.d_inner, H], dim=-1)
        g = -p["A"][:, None] * F.softplus(f + p["dt_bias"]).view(B, H, d)  # (B, H, dk)
        S = states["ssm_state"].float() * torch.exp(g)[..., None]  # (B, H, dk, dv)
        delta = (v - (S * k[..., None]).sum(-2)) * torch.sigmoid(beta)[..., None]
        S = S + k[..., None] * delta[..., None, :]
        return {"conv_state": new_conv, "ssm_state": S}, (S * q[..., None]).sum(-2).reshape(B, -1)

    def scan_token(self, params, states, dtypes, u, dt_in):
        """One token of the scan: the step, then the state stored in the cache dtype, as decode stores
        it. What `measure` times as its scan probe (a prefill runs it once per prompt token)."""
        new, y = self._step(params, states, u, dt_in)
        return {k: v.to(dtypes[k]) for k, v in new.items()}, y

    def scan_inputs(self, batch: int, state_dtype: torch.dtype, device: torch.device):
        """Zero states in `state_dtype` and random fp32 step inputs for `batch` sequences: the
        arguments of `scan_token` at this layer's shapes."""
        s = self.s
        gen = torch.Generator(device=device).manual_seed(0)
        states = {k: torch.zeros(batch, *shape, dtype=state_dtype, device=device) for k, shape in s.state_shapes().items()}
        width = s.conv_dim if s.variant in ("mamba2", "kda") else s.d_inner
        u = torch.randn(batch, width, device=device, generator=gen)
        gates = {"mamba2": s.n_heads, "kda": s.d_inner + s.n_heads}.get(s.variant)
        dt_in = torch.randn(batch, gates, device=device, generator=gen) if gates else None
        return self._fp32_params(), states, {k: state_dtype for k in states}, u, dt_in

    def _split_in(self, x: torch.Tensor):
        """in_proj output -> (u: the step input, z: the gate or None)."""
        s = self.s
        proj = F.linear(x, self.in_proj).float()
        if s.variant == "recurrence":
            return proj, None
        if s.variant == "shortconv":
            b, c, x = proj.split([s.d_inner] * 3, dim=-1)
            return b * x, c
        if s.variant == "kda":
            qkv, gates, z = proj.split([s.conv_dim, s.d_inner + s.n_heads, s.d_inner], dim=-1)
            return (qkv, gates), z
        if s.variant == "mamba2":
            z, xbc, dt = proj.split([s.d_inner, s.conv_dim, s.n_heads], dim=-1)
            return (xbc, dt), z
        xs, z = proj.split([s.d_inner, s.d_inner], dim=-1)
        return xs, z

    def _run(self, x: torch.Tensor, states: dict[str, torch.Tensor], store: dict[str, torch.Tensor] | None):
        """Scan x (B, S, hidden) from `states`; write the final state into `store`."""
        dtypes = {k: v.dtype for k, v in states.items()}
        u_all, z = self._split_in(x)
        params = self._fp32_params()
        ys = []
        S = x.shape[1]
        for t in range(S):
            if self.s.variant in ("mamba2", "kda"):
                u, dt_in = u_all[0][:, t], u_all[1][:, t]
            else:
                u, dt_in = u_all[:, t], None
            states, y = self.scan_token(params, states, dtypes, u, dt_in)
            ys.append(y)
        y = torch.stack(ys, dim=1)
        if z is not None:
            y = y * z if self.s.variant == "shortconv" else y * F.silu(z)  # LFM2: C gates the conv output
        if store is not None:
            for k, v in states.items():
                store[k].copy_(v)
        return F.linear(y.to(x.dtype), self.out_proj)

    def prefill(self, x, positions, cache: StateCache | None, shared):
        B = x.shape[0]
        if cache is not None:
            zeros = {k: torch.zeros_like(v) for k, v in cache.states.items()}
        else:
            zeros = {k: torch.zeros(B, *shape, device=x.device, dtype=x.dtype) for k, shape in self.s.state_shapes().items()}
        return self._run(x, zeros, cache.states if cache is not None else None), None

    def decode(self, x, pos, cache: StateCache):
        return self._run(x, dict(cache.states), cache.states)


class Block(nn.Module):
    # tensor-parallel: the sum over ranks of the row-parallel outputs (o_proj / out_proj, down_proj), set by
    # kvplan.measure.parallel; None in one process
    reduce = None

    def __init__(self, arch: RunArch, layer: LayerPlan, init: _Init) -> None:
        super().__init__()
        h = arch.hidden
        self.layer = layer
        self.input_layernorm = init.ones(h)
        if layer.kind is LayerKind.STATE:
            self.mixer: nn.Module = StateLayer(arch, layer, init)
        elif layer.kind is LayerKind.MLA:
            self.mixer = MLAttention(arch, layer, init)
        else:
            self.mixer = Attention(arch, layer, init)
        self.post_attention_layernorm = init.ones(h)
        self.gate_proj = init.linear(layer.mlp_width, h)
        self.up_proj = init.linear(layer.mlp_width, h)
        self.down_proj = init.linear(h, layer.mlp_width)

    def _sum(self, x):
        return x if self.reduce is None else self.reduce(x)

    def _mlp(self, x):
        y = rms_norm(x, self.post_attention_layernorm)
        return x + self._sum(F.linear(F.silu(F.linear(y, self.gate_proj)) * F.linear(y, self.up_proj), self.down_proj))

    def prefill(self, x, positions, cache, shared):
        out, kv = self.mixer.prefill(rms_norm(x, self.input_layernorm), positions, cache, shared)
        return self._mlp(x + self._sum(out)), kv

    def decode(self, x, pos, cache):
        return self._mlp(x + self._sum(self.mixer.decode(rms_norm(x, self.input_layernorm), pos, cache)))


class Decoder(nn.Module):
    """The run's decoder: `arch.layers` blocks between an embedding and an LM head."""

    def __init__(self, arch: RunArch, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        super().__init__()
        init = _Init(device, dtype)
        self.arch = arch
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            self.embed_tokens = init.uniform(arch.vocab, arch.hidden, std=1.0)
            self.layers = nn.ModuleList([Block(arch, layer, init) for layer in arch.layers])
            self.norm = init.ones(arch.hidden)
            self.lm_head = self.embed_tokens if arch.tie_word_embeddings else init.linear(arch.vocab, arch.hidden)
        self.allocation_sizes = tuple(init.allocated)  # parameter bytes in allocation order (for the allocator model)

    def prefill(self, tokens: torch.Tensor, caches: list[LayerCache | None] | None = None, all_logits: bool = False):
        """Logits (B, S or 1, vocab) of a prompt (B, S) from position 0; fills `caches` if given."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = F.embedding(tokens, self.embed_tokens)
        fresh_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, block in enumerate(self.layers):
            donor = block.layer.donor
            cache = caches[i] if caches is not None else None
            x, kv = block.prefill(x, positions, cache, fresh_kv.get(donor) if donor is not None else None)
            if kv is not None:
                fresh_kv[i] = kv
        if not all_logits:
            x = x[:, -1:]
        return F.linear(rms_norm(x, self.norm), self.lm_head)

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, caches: list[LayerCache | None]) -> torch.Tensor:
        """Logits (B, 1, vocab) of one token per sequence (B, 1) at position `pos` (1,)."""
        x = F.embedding(tokens, self.embed_tokens)
        for i, block in enumerate(self.layers):
            donor = block.layer.donor
            x = block.decode(x, pos, caches[i] if donor is None else caches[donor])
        return F.linear(rms_norm(x, self.norm), self.lm_head)

    def parameter_tensors(self) -> list[torch.Tensor]:
        return [p for p in self.parameters()]
