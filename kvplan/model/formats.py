"""KV-cache element formats with exact byte counts, scales and zero-points included.

A format stores values in groups: `group_size` values of `bits` each, plus
`group_overhead_bytes` of scale / zero-point per group, plus
`vector_overhead_bytes` per cached vector (one token, one head, K or V).
Bytes for one vector of n values = ceil(n / group) x group bytes + vector
overhead; a partial last group is padded to a whole group, as block-quantised
kernels store it (`padding_values` reports how many values that adds).

Sources: llama.cpp `ggml/src/ggml-common.h` block structs (q8_0 = fp16 d + 32
int8 = 34 B); vLLM `kv_cache_interface.py` (per-token-head fp32 scales, NVFP4
one fp8 scale per 16 values); HF `QuantizedCache` (quanto/hqq group scales).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SCALE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


@dataclass(frozen=True, slots=True)
class KVFormat:
    """One element format: how many bytes n cached values occupy."""

    name: str
    bits: int
    group_size: int = 1
    group_overhead_bytes: int = 0
    vector_overhead_bytes: int = 0
    description: str = ""

    @property
    def group_bytes(self) -> int:
        """Bytes of one group: packed values plus its scale / zero-point."""
        return self.group_size * self.bits // 8 + self.group_overhead_bytes

    def bytes_for(self, values: int) -> int:
        """Bytes of one vector of `values` elements (0 values -> 0 bytes)."""
        if values == 0:
            return 0
        groups = -(-values // self.group_size)
        return groups * self.group_bytes + self.vector_overhead_bytes

    def padding_values(self, values: int) -> int:
        """Values added to fill the last group of a vector of `values` elements."""
        return -values % self.group_size

    @property
    def is_quantised(self) -> bool:
        return self.bits < 16


def _plain(name: str, bits: int, description: str) -> KVFormat:
    return KVFormat(name, bits, description=description)


FIXED_FORMATS: dict[str, KVFormat] = {
    f.name: f
    for f in [
        _plain("fp32", 32, "4 bytes per value"),
        _plain("fp16", 16, "2 bytes per value"),
        _plain("bf16", 16, "2 bytes per value"),
        _plain("fp8", 8, "1 byte per value; per-tensor scale kept outside the cache (vLLM)"),
        _plain("fp8_e4m3", 8, "1 byte per value; per-tensor scale kept outside the cache"),
        _plain("fp8_e5m2", 8, "1 byte per value; per-tensor scale kept outside the cache"),
        _plain("int8", 8, "1 byte per value; per-tensor scale kept outside the cache"),
        KVFormat(
            "fp8_per_token_head", 8, vector_overhead_bytes=4,
            description="1 byte per value + one fp32 scale per token per head (vLLM)",
        ),
        KVFormat(
            "int8_per_token_head", 8, vector_overhead_bytes=4,
            description="1 byte per value + one fp32 scale per token per head (vLLM)",
        ),
        KVFormat(
            "nvfp4", 4, group_size=16, group_overhead_bytes=1,
            description="4-bit values + one fp8 scale per 16 (9 bytes per 16 values)",
        ),
        KVFormat("q8_0", 8, 32, 2, description="llama.cpp: fp16 scale + 32 int8 = 34 bytes per 32"),
        KVFormat("q4_0", 4, 32, 2, description="llama.cpp: fp16 scale + 32 nibbles = 18 bytes per 32"),
        KVFormat("q4_1", 4, 32, 4, description="llama.cpp: fp16 scale + fp16 min + 32 nibbles = 20 bytes per 32"),
        KVFormat("q5_0", 5, 32, 2, description="llama.cpp: fp16 scale + 32 x 5 bits = 22 bytes per 32"),
        KVFormat("q5_1", 5, 32, 4, description="llama.cpp: fp16 scale + fp16 min + 32 x 5 bits = 24 bytes per 32"),
        KVFormat("iq4_nl", 4, 32, 2, description="llama.cpp: fp16 scale + 32 codebook nibbles = 18 bytes per 32"),
    ]
}

# int4 / int2 with a group: int4 (group 64, fp16 scale + fp16 zero-point, as HF
# quanto's default q_group_size), int4_g32, int4_g128_fp32, int4_g32_sym (scale only).
_GROUPED = re.compile(r"^int([24])(?:_g(\d+))?(?:_(fp16|bf16|fp32))?(?:_(sym|asym))?$")
DEFAULT_INT_GROUP = 64

_NAMES_HELP = (
    "fp32, fp16, bf16, fp8, fp8_e4m3, fp8_e5m2, int8, fp8_per_token_head, int8_per_token_head, "
    "nvfp4, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, int4[_gN][_fp16|_bf16|_fp32][_sym|_asym], int2[...]"
)
FORMAT_HELP = _NAMES_HELP + ", auto (the model's dtype); K/V to differ, e.g. q8_0/q4_0"
STATE_FORMAT_HELP = _NAMES_HELP  # SSM state: one format, no 'auto' (leave the flag out for the model's dtype)


class UnknownFormatError(ValueError):
    pass


# torch's (and vLLM's --kv-cache-dtype, vllm/config/cache.py CacheDType) names of the plain formats
TORCH_NAMES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def parse_format(text: str, what: str = "KV cache dtype", names: str = FORMAT_HELP) -> KVFormat:
    """One format by name; raises UnknownFormatError naming `what` and the accepted `names`."""
    key = text.strip().lower()
    key = TORCH_NAMES.get(key, key)
    if key in FIXED_FORMATS:
        return FIXED_FORMATS[key]
    match = _GROUPED.match(key)
    if match:
        bits = int(match.group(1))
        group = int(match.group(2) or DEFAULT_INT_GROUP)
        scale = match.group(3) or "fp16"
        symmetric = match.group(4) == "sym"
        if group <= 0:
            raise UnknownFormatError(f"{text!r}: the group size must be positive, e.g. int{bits}_g32")
        if (group * bits) % 8:
            whole = 8 // math.gcd(8, bits)  # int4: an even group; int2: a multiple of 4
            raise UnknownFormatError(
                f"{text!r}: {group} {bits}-bit values do not fill whole bytes; use a group size that is a multiple of {whole}"
            )
        overhead = SCALE_BYTES[scale] * (1 if symmetric else 2)
        what = "scale" if symmetric else "scale + zero-point"
        return KVFormat(
            key, bits, group, overhead,
            description=f"{bits}-bit values, one {scale} {what} per {group} values",
        )
    raise UnknownFormatError(f"unknown {what} {text!r}; use one of: {names}")


def parse_state_format(text: str):
    """--state-dtype / state_dtype: one format for every state tensor (no 'auto'), or 'conv/ssm' (bf16/fp32:
    the conv state, then the SSM / recurrent state) as `kvplan.model.kinds.StateFormats`."""
    parts = text.split("/")
    if len(parts) == 1:
        return parse_format(text, "state dtype", STATE_FORMAT_HELP)
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise UnknownFormatError(f"{text!r}: write one state dtype, or conv/ssm as in bf16/fp32")
    from kvplan.model.kinds import StateFormats

    return StateFormats(*(parse_format(p.strip(), "state dtype", STATE_FORMAT_HELP) for p in parts))


@dataclass(frozen=True, slots=True)
class KVFormatPair:
    """The formats of K and V (equal unless written 'K/V', e.g. q8_0/q4_0)."""

    k: KVFormat
    v: KVFormat

    @property
    def name(self) -> str:
        return self.k.name if self.k == self.v else f"{self.k.name}/{self.v.name}"


def parse_format_pair(text: str, model_dtype: str) -> KVFormatPair:
    """'bf16', 'auto' (the model's dtype) or 'q8_0/q4_0' (K format / V format)."""
    parts = text.split("/")
    if len(parts) > 2:
        raise UnknownFormatError(f"{text!r}: write one format, or K/V as in q8_0/q4_0")
    if len(parts) == 2 and not all(p.strip() for p in parts):
        missing = "K and V halves are" if not any(p.strip() for p in parts) else "K half is" if not parts[0].strip() else "V half is"
        raise UnknownFormatError(f"{text!r}: the {missing} missing; write K/V as in q8_0/q4_0")
    formats = [parse_format(model_dtype if p.strip().lower() == "auto" else p) for p in parts]
    return KVFormatPair(formats[0], formats[-1])


def element_pair(element_bytes: int) -> KVFormatPair:
    """K and V as plain elements of `element_bytes` bytes each, no scales: the format of an
    engine that sizes its cache by element size alone (SGLang's pools, transformers' tensors)."""
    plain = KVFormat(f"{element_bytes}-byte", 8 * element_bytes)
    return KVFormatPair(plain, plain)
