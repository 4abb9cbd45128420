"""The manifest of a teacher feature store, and the options for how its features are stored.

A feature store (`pipeline.feature_store`) holds one teacher's token features for every data set. Its
manifest, kept as `attrs["manifest"]` on the store's root group, says which model made the features and
with which configuration, so that a later run can tell whether the store may be resumed or must be
rebuilt, and it carries the per-feature mean and standard deviation the distillation loss standardises with.
"""

import hashlib
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
"""Bump when the store layout changes; stores of another version are refused, not misread."""

FLOAT16_MANTISSA_BITS = 10
FLOAT32_MANTISSA_BITS = 23


def config_hash(config: dict[str, Any]) -> str:
    """Short sha256 of a config's canonical JSON (sorted keys), so equal configs hash equal in any key order."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class BitRoundLossy(BaseModel):
    """Keep only `bitround` mantissa bits (numcodecs BitRound, round to nearest even).

    Error bound, against the value stored without it (the dtype-cast feature x):
    |x' - x| <= 2^-(keepbits+1) * max(|x|, smallest normal), the smallest normal being 6.1e-5 for float16
    and 1.2e-38 for float32; i.e. a relative error bound, except for (sub)normal-tiny values where it is
    absolute. float16 storage adds its own 2^-11 relative rounding against the float32 features. Values
    within 2^-(keepbits+1) of the dtype's largest finite number may round to inf. The bound does not
    depend on a feature's scale, which suits teachers whose features differ in magnitude.
    """

    model_config = ConfigDict(extra="forbid")

    bitround: int = Field(ge=1, description="Mantissa bits kept (float16 has 10, float32 has 23).")


class QuantizeLossy(BaseModel):
    """Round to a binary grid finer than 10^-digits (numcodecs Quantize); float32 stores only.

    Error bound: absolute, |x' - x| <= 0.5 * 2^-ceil(log2(10^digits)) <= 0.5 * 10^-digits, plus the
    float32 rounding of the result (relative 2^-24). Not offered for float16: Quantize computes
    round(x * 2^bits) in the array's dtype, which overflows float16 for |x| > 65504 / 2^bits.
    """

    model_config = ConfigDict(extra="forbid")

    quantize: int = Field(ge=0, description="Decimal digits kept after the point.")


class StoreCompression(BaseModel):
    """How features are stored on disk: dtype, codec, optional lossy precision reduction, chunking.

    Measured on smooth random-walk features (see tests/test_feature_store.py and the report): float16
    features barely compress losslessly (Blosc zstd ratio ~1.1), so the real savings come from `lossy`.
    """

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float16", "float32"] = Field(
        "float16", description="On-disk dtype of the features; statistics are computed before the cast."
    )
    codec: Literal["zstd", "lz4", "none"] = Field(
        "zstd", description="Blosc compressor (with bit shuffle) applied to every feature chunk; 'none' stores raw."
    )
    clevel: int = Field(3, ge=0, le=9, description="Blosc compression level.")
    lossy: BitRoundLossy | QuantizeLossy | None = Field(
        None,
        description="Optional lossy filter before compression: {bitround: keepbits} (relative error "
        "<= 2^-(keepbits+1), for values above the dtype's smallest normal) or {quantize: digits} (absolute "
        "error <= 0.5*10^-digits, float32 only).",
    )
    chunk_segments: int = Field(
        64, ge=1, description="Segments per chunk: the unit of writing, of resuming and of loader reads."
    )

    @model_validator(mode="after")
    def _lossy_fits_dtype(self) -> "StoreCompression":
        if isinstance(self.lossy, BitRoundLossy):
            mantissa_bits = FLOAT16_MANTISSA_BITS if self.dtype == "float16" else FLOAT32_MANTISSA_BITS
            if self.lossy.bitround > mantissa_bits:
                raise ValueError(
                    f"lossy.bitround={self.lossy.bitround} keeps more mantissa bits than {self.dtype} has "
                    f"({mantissa_bits})"
                )
        if isinstance(self.lossy, QuantizeLossy) and self.dtype != "float32":
            raise ValueError(
                "lossy.quantize needs dtype float32 (on float16 it overflows for large features); "
                "use lossy.bitround for float16"
            )
        return self

    def describe(self) -> str:
        """One line for logs and `inspect`, e.g. 'float16, blosc zstd clevel 3 bitshuffle, bitround 7 bits'."""
        codec = "no compression" if self.codec == "none" else f"blosc {self.codec} clevel {self.clevel} bitshuffle"
        if isinstance(self.lossy, BitRoundLossy):
            lossy = f", bitround {self.lossy.bitround} bits (relative error <= 2^-{self.lossy.bitround + 1})"
        elif isinstance(self.lossy, QuantizeLossy):
            lossy = f", quantize {self.lossy.quantize} digits (absolute error <= 0.5e-{self.lossy.quantize})"
        else:
            lossy = ", lossless"
        return f"{self.dtype}, {codec}{lossy}, {self.chunk_segments} segments per chunk"


class GroupInfo(BaseModel):
    """One data set inside the store (a zarr group)."""

    model_config = ConfigDict(extra="forbid")

    n_segments: int = Field(ge=1, description="Segments (rows of `features`), in the series store's order.")
    max_tokens: int = Field(ge=1, description="Token axis length; shorter segments are NaN-padded.")
    token_rate: float = Field(gt=0, description="Tokens per second of series time (per sample when the sampling "
                              "rate is unknown); token i covers [i, i+1)/rate.")
    sampling_rate: float | None = Field(gt=0, description="Sampling rate of the data set's series, Hz; None: "
                                        "unknown (token times are then in samples).")
    complete: bool = Field(False, description="Every chunk written (set by finalize).")


class FeatureStoreManifest(BaseModel):
    """What made a feature store and what it holds. The caller fills the teacher fields; the store fills the rest.

    A store is resumed only when every field that shapes its content (`IDENTITY_FIELDS`) equals the
    requested one; otherwise it is refused until the user passes --overwrite.
    """

    model_config = ConfigDict(extra="forbid")

    IDENTITY_FIELDS: ClassVar[tuple[str, ...]] = (
        "schema_version", "teacher", "kind", "model_id", "revision", "weights_sha256", "layer",
        "native_rate", "feature_dim", "config_hash", "segment", "compression",
    )  # fmt: skip

    schema_version: int = Field(SCHEMA_VERSION, description="Store layout version.")
    teacher: str = Field(description="Teacher (and store) name, e.g. 'silero_vad'.")
    kind: str = Field(description="Teacher implementation, e.g. 'silero_vad', 'fracast', 'hf_audio'.")
    model_id: str = Field(description="Model identifier: hub id, package name or local path.")
    revision: str | None = Field(None, description="Model revision (hub commit or package version).")
    weights_sha256: str | None = Field(None, description="sha256 of the weight files, when known.")
    layer: int | str | None = Field(None, description="Layer the features are taken from; None = model output.")
    native_rate: float | None = Field(
        None, description="Input sampling rate the teacher expects, Hz; None for rate-free time-series teachers."
    )
    feature_dim: int = Field(gt=0, description="Features per token.")
    config: dict[str, Any] = Field(default_factory=dict, description="The teacher's feature-affecting config.")
    config_hash: str = Field("", description="config_hash(config); computed when left empty.")
    segment: dict[str, Any] = Field(
        default_factory=dict, description="Segmenting config the features depend on, e.g. max segment length."
    )
    compression: StoreCompression | None = Field(
        None, description="Storage options; filled by FeatureStore.create_or_open."
    )
    package_version: str = Field("", description="step-pipeline version that wrote the store.")
    created: str = Field("", description="Empty: a store's bytes do not depend on when it was written, so that a rerun "
                         "reproduces it exactly (the extract log says when). Stores written before December 2026 "
                         "carry their UTC creation time here.")
    groups: dict[str, GroupInfo] = Field(default_factory=dict, description="Data sets in the store.")
    feature_mean: list[float] | None = Field(
        None, description="Per-feature mean over every valid token of every group; set when complete."
    )
    feature_std: list[float] | None = Field(
        None, description="Per-feature population standard deviation, same tokens; set when complete."
    )
    complete: bool = Field(False, description="All groups written and statistics merged (set by finalize).")

    @model_validator(mode="after")
    def _hash_matches_config(self) -> "FeatureStoreManifest":
        expected = config_hash(self.config)
        if not self.config_hash:
            self.config_hash = expected
        elif self.config_hash != expected:
            raise ValueError(f"config_hash {self.config_hash!r} does not match config (hash {expected!r})")
        return self

    @property
    def dtype(self) -> str | None:
        """On-disk feature dtype ('float16' or 'float32')."""
        return self.compression.dtype if self.compression else None
