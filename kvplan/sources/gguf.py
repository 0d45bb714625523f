"""Read a GGUF file's header (llama.cpp's format): metadata and tensor shapes, no tensor data.

Layout (ggml `docs/gguf.md`, versions 2 and 3, little-endian):
magic "GGUF", u32 version, u64 tensor count, u64 metadata count; then each
metadata entry (string key, u32 value type, value); then each tensor's info
(string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset into the
data section). A string is a u64 length and that many UTF-8 bytes; an array is
a u32 item type, a u64 count and the items.

Every declared length is checked against the bytes left in the file and a sane
cap before it is read, so a truncated or hostile file fails with one clear
message and is never read whole. `spec_fields_from_gguf` (pure) maps the
metadata to ModelSpec fields the way llama.cpp's loader reads them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

from kvplan.errors import InputError
from kvplan.sources.file_weights import gguf_part, split_weight_bytes
from kvplan.model.spec_rules import layer_fields, size_limit_problem

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 (Aug 2023) used 32-bit counts; no current tool writes it
DEFAULT_ALIGNMENT = 32  # `general.alignment` when absent (gguf.md)

# Caps far above anything real, far below a hostile length: the largest real value
# is a chat template (tens of KB) and a tokenizer array (~260k tokens).
MAX_STRING_BYTES = 16 * 1024 * 1024
MAX_ARRAY_ITEMS = 1 << 26
MAX_METADATA_ENTRIES = 1 << 20
MAX_TENSORS = 1 << 22
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 4
# Arrays longer than this are kept as a count only (the tokenizer's token list).
KEEP_ARRAY_ITEMS = 65536

# GGUF metadata value types -> struct format (gguf.md `gguf_metadata_value_type`).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (name, values per block, bytes per block), from the
# block structs in ggml/src/ggml-common.h and ggml.c `type_traits` (checked against
# the llama.cpp vendored in llama-cpp-python 0.3.36, whose ggml.h ends at
# GGML_TYPE_COUNT = 43; ids 4, 5 and 31-33, 36-38 are removed types).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),  # 4 UE4M3 scales (one per 16 values) + 32 B of packed e2m1
    41: ("Q1_0", 128, 18),  # fp16 delta + 128 one-bit quants
    42: ("Q2_0", 64, 18),  # fp16 delta + 64 two-bit quants
}


class GGUFError(InputError):
    """A GGUF file that cannot be read as declared (exit 2)."""


@dataclass(frozen=True)
class LargeArray:
    """An array kept as its length only (e.g. `tokenizer.ggml.tokens`)."""

    item_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"type{self.ggml_type}", 0, 0))[0]

    @property
    def num_bytes(self) -> Optional[int]:
        """Bytes of this tensor's data, or None for a ggml type kvplan does not know."""
        if self.ggml_type not in GGML_TYPES:
            return None
        _, block, size = GGML_TYPES[self.ggml_type]
        return -(-self.numel // block) * size


@dataclass(frozen=True)
class TypeTotal:
    tensors: int
    elements: int
    num_bytes: Optional[int]


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's metadata and tensor infos."""

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]

    @property
    def architecture(self) -> Optional[str]:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def num_parameters(self) -> int:
        """Elements over every tensor: exact, whatever the quantization."""
        return sum(t.numel for t in self.tensors)

    @property
    def num_bytes(self) -> Optional[int]:
        """Tensor data bytes over every tensor (whole ggml blocks); None when a type is unknown."""
        sizes = [t.num_bytes for t in self.tensors]
        return None if None in sizes else sum(sizes)

    def tensor_types(self) -> dict[str, TypeTotal]:
        """Tensors, elements and bytes per ggml type (e.g. {'Q4_K': ..., 'F32': ...})."""
        acc: dict[str, list] = {}
        for t in self.tensors:
            a = acc.setdefault(t.type_name, [0, 0, 0])
            a[0] += 1
            a[1] += t.numel
            a[2] = None if a[2] is None or t.num_bytes is None else a[2] + t.num_bytes
        return {k: TypeTotal(v[0], v[1], v[2]) for k, v in sorted(acc.items())}


class _Reader:
    """Bounded reads: every length is checked against the bytes left before reading."""

    def __init__(self, f: BinaryIO, size: int, path: Path):
        self.f, self.size, self.path, self.pos = f, size, path, 0

    def fail(self, message: str) -> GGUFError:
        return GGUFError(f"{self.path}: {message}")

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise self.fail(
                f"truncated: {what} needs {n:,} bytes at offset {self.pos:,} but the file ends at {self.size:,}"
            )
        data = self.f.read(n)
        if len(data) != n:  # the file shrank under us
            raise self.fail(f"truncated: {what} at offset {self.pos:,}")
        self.pos += n
        return data

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        if n > MAX_STRING_BYTES:
            raise self.fail(f"{what} declares a {n:,}-byte string, above the {MAX_STRING_BYTES:,}-byte cap")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8 text") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= MAX_NESTING:
                raise self.fail(f"{what}: arrays nested deeper than {MAX_NESTING}")
            item_type = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            if count > MAX_ARRAY_ITEMS:
                raise self.fail(f"{what} declares {count:,} array items, above the {MAX_ARRAY_ITEMS:,} cap")
            min_item = struct.calcsize(_SCALAR[item_type]) if item_type in _SCALAR else 8 if item_type in (_STRING,) else 12
            if item_type not in _SCALAR and item_type not in (_STRING, _ARRAY):
                raise self.fail(f"{what}: unknown array item type {item_type}")
            if count * min_item > self.size - self.pos:
                raise self.fail(
                    f"truncated: {what} declares {count:,} items, more than the {self.size - self.pos:,} "
                    "bytes left in the file can hold"
                )
            if item_type in _SCALAR and count <= KEEP_ARRAY_ITEMS:
                fmt = _SCALAR[item_type]
                raw = self.take(count * struct.calcsize(fmt), what)
                return list(struct.unpack("<" + fmt[1] * count, raw))
            items = [self.value(item_type, what, depth + 1) for _ in range(count)]
            return items if count <= KEEP_ARRAY_ITEMS else LargeArray(item_type, count)
        raise self.fail(f"{what}: unknown value type {vtype}")


def read_gguf(path: Path) -> GGUFHeader:
    """Parse a GGUF header: metadata and tensor infos; tensor data is only bounds-checked."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            return _parse(_Reader(f, size, path))
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{path}: is a folder, not a GGUF file") from None
    except OSError as exc:
        raise GGUFError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _parse(r: _Reader) -> GGUFHeader:
    magic = r.take(4, "the magic") if r.size >= 4 else b""
    if magic != GGUF_MAGIC:
        raise r.fail(f"not a GGUF file (starts with {magic!r}, not b'GGUF')")
    version = r.unpack("<I", "the version")
    if version not in SUPPORTED_VERSIONS:
        raise r.fail(
            f"GGUF version {version} is not supported (kvplan reads versions 2 and 3; "
            "a huge number means a big-endian file)"
        )
    n_tensors = r.unpack("<Q", "the tensor count")
    n_kv = r.unpack("<Q", "the metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_METADATA_ENTRIES:
        raise r.fail(f"declares {n_tensors:,} tensors and {n_kv:,} metadata entries, above kvplan's caps")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        vtype = r.unpack("<I", f"metadata {key!r} type")
        metadata[key] = r.value(vtype, f"metadata {key!r}")
    tensors = []
    for i in range(n_tensors):
        name = r.string(f"tensor #{i} name")
        n_dims = r.unpack("<I", f"tensor {name!r} n_dims")
        if n_dims > MAX_DIMS:
            raise r.fail(f"tensor {name!r} declares {n_dims} dimensions; ggml allows at most {MAX_DIMS}")
        shape = tuple(r.unpack("<Q", f"tensor {name!r} shape") for _ in range(n_dims))
        ggml_type = r.unpack("<I", f"tensor {name!r} type")
        offset = r.unpack("<Q", f"tensor {name!r} offset")
        tensors.append(TensorInfo(name, shape, ggml_type, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0:
        raise r.fail(f"general.alignment {alignment!r} is not a positive integer")
    data_start = -(-r.pos // alignment) * alignment
    for t in tensors:
        nbytes = t.num_bytes
        if nbytes is not None and data_start + t.offset + nbytes > r.size:
            raise r.fail(
                f"truncated: tensor {t.name!r} ({t.type_name}, {nbytes:,} bytes at data offset {t.offset:,}) "
                f"runs past the end of the file ({r.size:,} bytes)"
            )
    return GGUFHeader(path=str(r.path), version=version, metadata=metadata, tensors=tuple(tensors))


# ------------------------------------------------------------------ spec mapping

# Sliding-window layouts llama.cpp sets in code per architecture when the file has
# no `{arch}.attention.sliding_window_pattern` (src/llama-model.cpp `load_hparams`):
# (kind, period, default window). A period p marks layer il sliding when
# il % p < p - 1 (`llama_hparams::set_swa_pattern`): Gemma-2 every other layer from
# layer 0, Gemma-3 five of six, gpt-oss alternating, Cohere-2 three of four;
# Llama-4 holds 3 chunked layers of 8192 tokens, then one global layer.
_SWA_DEFAULTS: dict[str, tuple[str, int, Optional[int]]] = {
    "gemma2": ("sliding_attention", 2, 4096),
    "gemma3": ("sliding_attention", 6, None),
    "gpt-oss": ("sliding_attention", 2, None),
    "cohere2": ("sliding_attention", 4, None),
    "llama4": ("chunked_attention", 4, 8192),
}

# Architectures whose state layers kvplan maps, and how (Jamba: Mamba-1 blocks).
_MAMBA1_ARCHS = ("jamba",)

LLAMA_CPP_KV_DTYPE = "float16"  # llama.cpp's default -ctk/-ctv is f16


def _pattern_layers(period: int, n_layers: int) -> list[bool]:
    """set_swa_pattern(period): layer il slides when il % period < period - 1; 0 means every layer."""
    if period == 0:
        return [True] * n_layers
    return [il % period < period - 1 for il in range(n_layers)]


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def spec_fields_from_gguf(header: GGUFHeader) -> tuple[dict[str, Any], list[str]]:
    """ModelSpec fields (no name/source) and notes from a GGUF header, as llama.cpp reads it.

    Raises InputError naming the missing keys when the file lacks what sizing needs.
    """
    md = header.metadata
    arch = header.architecture
    where = header.path
    if arch is None:
        raise GGUFError(f"{where}: no general.architecture in the metadata; cannot size it")
    p = f"{arch}."

    def get(key: str) -> Any:
        return md.get(p + key)

    notes: list[str] = [f"read from the GGUF header (llama.cpp architecture {arch!r})"]
    missing = [p + k for k in ("block_count", "embedding_length", "attention.head_count") if get(k) is None]
    if missing:
        raise GGUFError(f"{where}: cannot size a {arch!r} model: missing metadata {', '.join(missing)}")
    n_layers = _int(get("block_count"))
    hidden = _int(get("embedding_length"))
    if not n_layers or not hidden:
        raise GGUFError(f"{where}: {p}block_count and {p}embedding_length must be positive integers")
    for key, field, value in (("block_count", "num_hidden_layers", n_layers), ("embedding_length", "hidden_size", hidden)):
        problem = size_limit_problem(field, value)
        if problem:  # before the per-layer lists below
            raise GGUFError(f"{where}: {p}{key}: {problem}")

    def per_layer(key: str) -> Optional[list[int]]:
        value = get(key)
        if value is None:
            return None
        if isinstance(value, list):
            if len(value) != n_layers or not all(_int(v) is not None for v in value):
                raise GGUFError(f"{where}: {p}{key} is an array of {len(value)} entries, not {n_layers} integers")
            return list(value)
        if _int(value) is None:
            raise GGUFError(f"{where}: {p}{key} is {value!r}, not an integer")
        return [value] * n_layers

    heads_per_layer = per_layer("attention.head_count")
    kv_per_layer = per_layer("attention.head_count_kv") or heads_per_layer
    assert heads_per_layer is not None and kv_per_layer is not None
    attn_heads = {h for h in heads_per_layer if h}
    attn_kv = {kv for h, kv in zip(heads_per_layer, kv_per_layer) if h and kv}
    if not attn_heads:  # 0 heads in every layer: nothing to size, and not a per-layer difference
        raw = get("attention.head_count")
        raise GGUFError(
            f"{where}: {p}attention.head_count = {raw!r}: no layer has an attention head; "
            "a GGUF model needs a positive head count (the file's metadata is broken)"
        )
    if len(attn_heads) != 1 or len(attn_kv) > 1:
        raise GGUFError(
            f"{where}: attention head counts vary by layer ({p}attention.head_count takes {sorted(attn_heads)}, "
            f"head_count_kv {sorted(attn_kv)}); kvplan's spec holds one count for every attention layer"
        )
    heads = attn_heads.pop()
    kv_heads = attn_kv.pop() if attn_kv else heads
    state_layer = [kv == 0 for kv in kv_per_layer]

    fields: dict[str, Any] = {
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "torch_dtype": LLAMA_CPP_KV_DTYPE,
    }
    notes.append("KV element type assumed f16, llama.cpp's default (-ctk/-ctv); pass --kv-cache-dtype to change it")

    ctx = _int(get("context_length"))
    if ctx:
        fields["max_position_embeddings"] = ctx
    ff = get("feed_forward_length")
    if isinstance(ff, list):
        ff = max((v for v in ff if _int(v)), default=None)
    if _int(ff):
        fields["intermediate_size"] = ff

    vocab = _int(get("vocab_size"))
    if vocab is None:
        tokens = md.get("tokenizer.ggml.tokens")
        vocab = tokens.count if isinstance(tokens, LargeArray) else len(tokens) if isinstance(tokens, list) else None
    if not vocab:
        raise GGUFError(f"{where}: no {p}vocab_size and no tokenizer.ggml.tokens; cannot tell the vocabulary size")
    fields["vocab_size"] = vocab

    key_len, value_len = _int(get("attention.key_length")), _int(get("attention.value_length"))
    kv_lora = _int(get("attention.kv_lora_rank"))
    if kv_lora:
        # DeepSeek-2/3 as llama.cpp converts them (convert_hf_to_gguf.py DeepseekV2Model):
        # key_length = kv_lora_rank + rope dims; key_length_mla / value_length_mla hold the
        # decompressed head dims (older files: key_length = nope + rope, value_length = v).
        rope = _int(get("rope.dimension_count"))
        if not rope:
            raise GGUFError(f"{where}: MLA model without {p}rope.dimension_count; cannot size its latent")
        fields["kv_lora_rank"] = kv_lora
        fields["qk_rope_head_dim"] = rope
        q_lora = _int(get("attention.q_lora_rank"))
        if q_lora:
            fields["q_lora_rank"] = q_lora
        k_mla, v_mla = _int(get("attention.key_length_mla")), _int(get("attention.value_length_mla"))
        if k_mla and k_mla > rope:
            fields["qk_nope_head_dim"] = k_mla - rope
        elif key_len and key_len != kv_lora + rope and key_len > rope:
            fields["qk_nope_head_dim"] = key_len - rope
        v = v_mla or (value_len if value_len and value_len != kv_lora else None)
        if v:
            fields["v_head_dim"] = v
    else:
        head_dim = key_len or (hidden // heads if hidden % heads == 0 else None)
        if head_dim is None:
            raise GGUFError(f"{where}: no {p}attention.key_length and {hidden} is not a multiple of {heads} heads")
        fields["head_dim"] = head_dim
        if value_len and value_len != head_dim:
            fields["v_head_dim"] = value_len

    experts = _int(get("expert_count"))
    if experts:
        fields["num_local_experts"] = experts
        used = _int(get("expert_used_count"))
        if used:
            fields["num_experts_per_tok"] = used
        moe_ff = _int(get("expert_feed_forward_length"))
        if moe_ff:
            fields["moe_intermediate_size"] = moe_ff
        shared = _int(get("expert_shared_count"))
        if shared is not None:
            fields["n_shared_experts"] = shared

    # Layer kinds: state layers (head_count_kv 0), then the sliding / chunked pattern.
    kinds = ["state" if s else "full_attention" for s in state_layer]
    if any(state_layer):
        if arch not in _MAMBA1_ARCHS:
            raise GGUFError(
                f"{where}: {arch!r} has recurrent layers (head_count_kv 0) whose state kvplan does not map "
                f"from GGUF; it maps {', '.join(_MAMBA1_ARCHS)}"
            )
        d_conv, d_state, d_inner = (_int(get(k)) for k in ("ssm.conv_kernel", "ssm.state_size", "ssm.inner_size"))
        if not (d_conv and d_state and d_inner):
            raise GGUFError(f"{where}: state layers need {p}ssm.conv_kernel, ssm.state_size and ssm.inner_size")
        if d_inner % hidden:
            raise GGUFError(f"{where}: {p}ssm.inner_size {d_inner} is not a multiple of embedding_length {hidden}")
        fields.update(mamba_d_conv=d_conv, mamba_d_state=d_state, mamba_expand=d_inner // hidden)

    window = _int(get("attention.sliding_window"))
    pattern_value = get("attention.sliding_window_pattern")
    sliding: Optional[list[bool]] = None
    kind_name = "sliding_attention"
    if isinstance(pattern_value, list) and len(pattern_value) == n_layers:
        sliding = [bool(v) for v in pattern_value]
    elif _int(pattern_value) is not None:
        sliding = _pattern_layers(pattern_value, n_layers)
    if arch in _SWA_DEFAULTS:
        kind_name, period, default_window = _SWA_DEFAULTS[arch]
        if arch == "llama4":
            window = default_window  # llama.cpp sets n_swa = 8192 for Llama-4 in code
        elif window is None:
            window = default_window
        if sliding is None:
            sliding = _pattern_layers(period, n_layers)
    if sliding is not None and window:
        kinds = [kind_name if s and k != "state" else k for s, k in zip(sliding, kinds)]
        if kind_name == "chunked_attention":
            fields["attention_chunk_size"] = window
        else:
            fields["sliding_window"] = window
    elif window:
        notes.append(
            f"{p}attention.sliding_window = {window} is not applied: kvplan knows llama.cpp's sliding "
            f"layout for {', '.join(sorted(_SWA_DEFAULTS))} and files that carry a sliding_window_pattern"
        )
    fields.update(layer_fields(kinds))

    # Parameters: every tensor's elements (exact); experts inactive per token, exactly,
    # from the stacked *_exps tensors (their last dim is the expert count).
    total = header.num_parameters
    fields["num_parameters"] = total
    # llama.cpp reuses token_embd as the output matrix when the file has no output.weight.
    fields["tie_word_embeddings"] = not any(t.name == "output.weight" for t in header.tensors)
    used = fields.get("num_experts_per_tok")
    if experts and used and experts > used:
        expert_elems = sum(t.numel for t in header.tensors if gguf_part(t.name) == "routed_experts")
        if expert_elems:
            fields["num_active_parameters"] = total - expert_elems * (experts - used) // experts
    types = ", ".join(f"{k} {v.tensors}" for k, v in header.tensor_types().items())
    notes.append(f"parameters: every tensor's elements from the header ({len(header.tensors)} tensors: {types})")
    fields["file_weight_bytes"] = {"source": "gguf", **weight_bytes_from_gguf(header)}
    by_type = ", ".join(f"{k} {v.num_bytes:,}" for k, v in header.tensor_types().items())
    notes.append(f"weight bytes from the header: {header.num_bytes:,} ({by_type})")
    return fields, notes


def weight_bytes_from_gguf(header: GGUFHeader) -> dict[str, int]:
    """Each tensor's data bytes (whole ggml blocks), summed by part (kvplan.sources.file_weights).

    Raises GGUFError naming the tensor and the type id when a tensor's ggml type is one
    kvplan does not know: its bytes cannot be read from the header, and a guess would
    size the weights silently wrong.
    """
    for t in header.tensors:
        if t.ggml_type not in GGML_TYPES:
            raise GGUFError(
                f"{header.path}: tensor {t.name!r} has ggml type {t.ggml_type}, which kvplan does not know "
                f"(it knows llama.cpp's ggml.h types up to id {max(GGML_TYPES)}), so its weight bytes "
                "cannot be read from the file; update kvplan, or write a spec with weights_dtype instead"
            )
    return split_weight_bytes(((t.name, t.num_bytes or 0) for t in header.tensors), gguf_part)
