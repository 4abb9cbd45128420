"""Catalog entries: what a data set is, where its series come from, and (for probes) how it is scored."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Domain = Literal[
    "astronomy", "earth_science", "bioacoustics", "neuroscience", "radar", "audio", "physiology", "other"
]
FileFormat = Literal["npy", "npz", "csv", "wav", "flac", "zarr", "hdf5", "edf", "mseed"]


class GeneratorSource(BaseModel):
    """Series made by one of `data_catalog.generators`; materialised by `step-pipeline prepare`."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["generator"] = "generator"
    generator: str = Field(description="Name of the generator in data_catalog.generators.GENERATORS.")
    seed: int = Field(description="Seed of this set; item i uses default_rng([seed, i]). Keep sets' seeds disjoint.")
    count: int = Field(ge=1, description="Number of series to generate.")
    options: dict = Field(default_factory=dict, description="Generator options (difficulty knobs, lengths).")


class FileSource(BaseModel):
    """Series read in place from files under the catalog's data root (never copied)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["files"] = "files"
    paths: list[str] = Field(min_length=1, description="Glob patterns relative to the catalog's data_root.")
    format: FileFormat | None = Field(None, description="File format; inferred from the suffix when omitted.")
    key: str | None = Field(
        None, description="Array inside the file: npz key, HDF5 dataset, Zarr array path. None: the only one."
    )
    stacked: bool = Field(
        False,
        description="The array holds many series: (series, time) or (series, channels, time). "
        "Otherwise one file (or npz key) is one series of shape (time,) or (channels, time).",
    )
    labels_file: str | None = Field(
        None, description="CSV (relative to data_root) with columns series_id,label[,split] for probe sets."
    )
    ragged: list["RaggedPart"] | None = Field(
        None,
        description="Series of different lengths concatenated along time in one array per part (npz, HDF5 or "
        "Zarr): each part names the values array (channels, sum of lengths), the lengths array and, for probe "
        "sets, the labels array and the split of its series. Series ids are `<file stem>:<split or part>:<k>`.",
    )
    non_finite: Literal["reject", "interpolate"] = Field(
        "reject", description="What to do with NaN/Inf samples: refuse the series, or interpolate linearly."
    )


class RaggedPart(BaseModel):
    """One array of concatenated series inside a file: series k is values[:, offsets[k]:offsets[k + 1]]."""

    model_config = ConfigDict(extra="forbid")
    values: str = Field(description="Key of the (channels, sum of lengths) or (sum of lengths,) values array.")
    lengths: str = Field(description="Key of the (series,) integer lengths array.")
    labels: str | None = Field(None, description="Key of the (series,) integer class labels (probe sets).")
    split: Literal["train", "test"] | None = Field(
        None, description="Official split of every series of this part (probe sets), e.g. a UCR train/test file."
    )


FileSource.model_rebuild()

Source = Annotated[GeneratorSource | FileSource, Field(discriminator="kind")]


class BaselineScore(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="What the baseline is.")
    score: float = Field(ge=0, le=1, description="Its score under the task's metric on the test split.")


class ProbeSpec(BaseModel):
    """How a labelled data set is scored by a linear probe on frozen embeddings."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field(description="What the label means.")
    class_names: list[str] = Field(min_length=2, description="Class names; label k is class_names[k].")
    metric: Literal["binary_f1", "macro_f1"] = Field(description="binary_f1 (positive = label 1) or macro_f1.")
    test_fraction: float = Field(0.5, gt=0, lt=1, description="Fraction of series (the last ones) held out as test.")
    baseline: BaselineScore | None = Field(None, description="Score of a simple baseline, to show the task is hard.")

    @model_validator(mode="after")
    def _binary_needs_two_classes(self):
        if self.metric == "binary_f1" and len(self.class_names) != 2:
            raise ValueError(f"binary_f1 needs exactly 2 class_names, got {len(self.class_names)}")
        return self


class CatalogEntry(BaseModel):
    """One declared data set."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="Unique name (lower case, digits, underscores).")
    description: str = Field("", description="One line on what the data is.")
    domain: Domain = Field(description="Scientific domain.")
    role: Literal["pretrain", "probe"] = Field(description="pretrain: unlabelled distillation corpus; probe: task.")
    source: Source = Field(description="Where the series come from.")
    sampling_rate: float | Literal["unknown"] | None = Field(
        description="Sampling rate in Hz; `unknown` when nobody knows it (e.g. UCR archive sets): teachers then "
        "take the samples as they are (never resampled) and token times are in samples; null: every file states "
        "its own rate (wav, flac, EDF, miniSEED).",
    )
    channels: int = Field(ge=1, description="Number of channels of every series.")
    unit: str = Field(description="Physical unit of the values (e.g. strain, counts, V).")
    channel_names: list[str] | None = Field(
        None,
        description="A fixed montage: every series has these channels in this order (e.g. EEG electrodes). "
        "Embeddings of this data set then keep channels apart (per-channel vectors concatenated in this order) "
        "in evaluate and embed, since which channel shows what can be the signal (left vs right hemisphere), and a "
        "student with `montage_channels` adds its learned channel identities to them.",
    )
    probe: ProbeSpec | None = Field(None, description="Labels and scoring; required for role probe.")

    @field_validator("sampling_rate", mode="before")
    @classmethod
    def _positive_rate_or_unknown(cls, value):
        if value is None or value == "unknown":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError("must be a positive number of Hz, `unknown` or null")
        return float(value)

    @property
    def fixed_montage(self) -> bool:
        """True when channel c is the same sensor in every series (the catalog declares `channel_names`)."""
        return self.channel_names is not None

    @property
    def rate_unknown(self) -> bool:
        """True when the catalog declares that nobody knows this data set's sampling rate."""
        return self.sampling_rate == "unknown"

    @model_validator(mode="after")
    def _probe_iff_role_probe(self):
        if self.channel_names is not None and len(self.channel_names) != self.channels:
            raise ValueError(f"data set {self.name!r}: {len(self.channel_names)} channel_names for "
                             f"{self.channels} channels")
        if isinstance(self.source, FileSource) and self.source.ragged:
            if self.source.stacked:
                raise ValueError(f"data set {self.name!r}: source.ragged and source.stacked exclude each other")
            if self.role == "probe" and not self.source.labels_file and any(p.labels is None for p in self.source.ragged):
                raise ValueError(f"data set {self.name!r}: a probe set needs labels for every ragged part "
                                 "(source.ragged[].labels) or a labels_file")
        if self.role == "probe" and self.probe is None:
            raise ValueError(f"data set {self.name!r} has role 'probe' but no 'probe' section")
        if self.role == "pretrain" and self.probe is not None:
            raise ValueError(f"data set {self.name!r} has role 'pretrain' but a 'probe' section")
        return self


class Catalog(BaseModel):
    """The whole catalog file."""

    model_config = ConfigDict(extra="forbid")
    data_root: str = Field("data/raw", description="Root of file-based data sets; file paths may not leave it.")
    datasets: list[CatalogEntry] = Field(description="Declared data sets.")

    @model_validator(mode="after")
    def _unique_names(self):
        names = [entry.name for entry in self.datasets]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"data set names must be unique, repeated: {duplicates}")
        return self

    def get(self, name: str) -> CatalogEntry:
        for entry in self.datasets:
            if entry.name == name:
                return entry
        raise KeyError(f"no data set named {name!r} in the catalog (known: {[e.name for e in self.datasets]})")
