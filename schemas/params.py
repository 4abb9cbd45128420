"""params.yaml: one section per stage. These models are the single source of truth for defaults and docs.

`step-pipeline <stage> --help` is generated from the field descriptions here.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.loading import load_yaml_model
from schemas.manifest import StoreCompression
from schemas.teachers import TeacherSpec


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrepareParams(Section):
    catalog: str = Field("data_catalog/catalog.yaml", description="Catalog file declaring the data sets.")
    series_store: str = Field("data/series.zarr", description="Zarr store the generated data sets are written "
                              "to: a local path or an fsspec URL (s3://...).")
    chunk_samples: int = Field(262144, ge=1024, description="Samples per chunk along time in the series store.")


class CorpusSource(Section):
    """How many series one pretraining data set of the catalog contributes, and how long they are."""

    segments: int = Field(ge=1, description="Series drawn from this source (before `corpus.scale`).")
    min_length: int | None = Field(None, ge=2, description="Shortest series in samples (None: the catalog's).")
    max_length: int | None = Field(None, ge=2, description="Longest series in samples (None: the catalog's); "
                                   "lengths are log-uniform in between.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_length and self.max_length and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} > max_length {self.max_length}")
        return self


# The broad corpus's sources in data_catalog/catalog.yaml (generators in data_catalog/generators/): series drawn
# per source and their lengths in samples. The catalog declares the same numbers; these win. Each source's lengths
# stay within one decimation band of fracast (ceil(length / 2048) constant), since a teacher that decimates long
# inputs by a length-dependent factor needs one factor per data set (one token grid per store group); together
# the bands cover 16 to 16384 samples, plus 2**20 for the long source. `prepare` checks this against the teachers.
DEFAULT_CORPUS_SOURCES = {
    "corpus_kernel_synth": {"segments": 150, "min_length": 32, "max_length": 2048},
    "corpus_shapes": {"segments": 120, "min_length": 16, "max_length": 2048},
    "corpus_shapes_100hz": {"segments": 50, "min_length": 2049, "max_length": 4096},
    "corpus_shapes_16khz": {"segments": 50, "min_length": 14337, "max_length": 16384},
    "corpus_mixup": {"segments": 100, "min_length": 32, "max_length": 2048},
    "corpus_ecg": {"segments": 40, "min_length": 6145, "max_length": 8192},
    "corpus_ppg": {"segments": 30, "min_length": 2049, "max_length": 4096},
    "corpus_respiration": {"segments": 30, "min_length": 512, "max_length": 2048},
    "corpus_emg": {"segments": 30, "min_length": 8193, "max_length": 10240},
    "corpus_eda": {"segments": 30, "min_length": 64, "max_length": 2048},
    "corpus_seismic_real": {"segments": 60, "min_length": 2049, "max_length": 4096},
    "corpus_multichannel_3": {"segments": 40, "min_length": 64, "max_length": 2048},
    "corpus_multichannel_8": {"segments": 30, "min_length": 2049, "max_length": 4096},
    "corpus_multichannel_32": {"segments": 15, "min_length": 64, "max_length": 2048},
    "corpus_long": {"segments": 2, "min_length": 1048576, "max_length": 1048576},
}


class CorpusParams(Section):
    """The distillation corpus's size: the catalog declares the pretraining sources, these numbers size them."""

    scale: float = Field(
        1.0, gt=0,
        description="Multiplies the series count of every generated pretraining data set (the in-domain pretrain_* "
        "sets too; at least 1 each): 0.1 for a quick run, 100 for about 1e5 series. Prepare, extraction and "
        "distillation all stream, so memory stays bounded.",
    )
    sources: dict[str, CorpusSource] = Field(
        default_factory=lambda: {name: CorpusSource(**spec) for name, spec in DEFAULT_CORPUS_SOURCES.items()},
        description="Per catalog pretraining data set: series count and length range (overrides the catalog's). "
        "A name missing from the catalog is skipped with a warning; a probe set is refused. A range must keep "
        "every teacher's token grid fixed within the set (`prepare` checks it): e.g. fracast's ceil(length / "
        "max_steps) must not change over it.",
    )


class SegmentParams(Section):
    max_samples: int = Field(
        131072, ge=16,
        description="Series longer than this are cut into consecutive segments of at most this many samples "
        "(ids `series@start`); teachers and student see segments. Bounds memory and token counts.",
    )


class ExtractParams(Section):
    teachers: dict[str, TeacherSpec] = Field(description="Teachers by store name; one feature store each.")
    datasets: list[str] | None = Field(
        None, description="Data sets to extract (default: every catalog data set, pretrain and probe)."
    )
    store_dir: str = Field("data/features", description="Directory of the feature stores (<teacher>.zarr): a "
                           "local path or an fsspec URL (s3://...).")
    compression: StoreCompression = Field(default_factory=StoreCompression, description="Store dtype and codecs.")
    queue_size: int = Field(4, ge=1, description="Batches waiting for the writer thread (bounds memory).")


class StudentParams(Section):
    preset: Literal["cpu-small", "paper"] = Field("cpu-small", description="STEPConfig preset.")
    overrides: dict = Field(default_factory=dict, description="STEPConfig fields that replace the preset's.")


class CropParams(Section):
    enabled: bool = Field(False, description="Random crops cut at teacher-token boundaries (augmentation).")
    min_fraction: float = Field(0.5, gt=0, le=1, description="Shortest crop as a fraction of the segment.")


class DistillParams(Section):
    datasets: list[str] | None = Field(None, description="Training data sets (default: every pretrain set).")
    teacher_weights: dict[str, float] = Field(
        default_factory=dict, description="Loss weight per teacher (default 1.0 for every extracted teacher)."
    )
    alignment: Literal["force_stride", "interpolate"] = Field(
        "interpolate",
        description="interpolate (default): one forward at the student's own adaptive N, tokens resampled to each "
        "teacher grid, so the stride network trains and embeddings use the token density seen in training; "
        "force_stride: N forced to each teacher's count, one forward per grid (the paper's way).",
    )
    head: Literal["linear", "mlp"] = Field(
        "linear",
        description="Projection head per teacher: linear (LayerNorm + Linear) makes the student's own tokens carry the "
        "teacher features linearly, which is what linear probes of its embedding read; mlp adds a hidden layer.",
    )
    cosine_weight: float = Field(1.0, ge=0, description="Weight of (1 - cosine similarity) per token.")
    smooth_l1_weight: float = Field(1.0, ge=0, description="Weight of smooth-L1 on standardised targets.")
    smooth_l1_beta: float = Field(1.0, gt=0, description="Smooth-L1 transition point.")
    patching_weight: float = Field(0.1, ge=0, description="Weight of the adaptive-patching penalties.")
    summary_weight: float = Field(
        1.0, ge=0,
        description="Weight of the summary loss: the student's mean+std pooled tokens, through a summary head per "
        "teacher, against that teacher's mean+std pooled standardised targets (0: off).",
    )
    summary_pooling: Literal["mean+std", "mean+std+max"] = Field(
        "mean+std",
        description="How the summary loss pools the student's tokens and each teacher's targets: mean+std, or "
        "mean+std+max (the moments the embedding and the probe read; the max keeps a transient in a few tokens).",
    )
    relation_weight: float = Field(
        0.0, ge=0,
        description="Weight of the relation loss: within a batch (one data set), the softmax of the cosine similarities "
        "of each series' summary prediction to every series' pooled target must match the teacher's own similarities "
        "among those targets (CompRess/SEED-style), so the student keeps each teacher's neighbourhoods within a data "
        "set, which a probe reads, not only the large differences between data sets (0: off).",
    )
    relation_temperature: float = Field(0.1, gt=0, description="Temperature of the relation loss's softmaxes.")
    structure_weight: float = Field(
        1.0, ge=0,
        description="Weight of the structure loss: a head on each final token predicts that token's own fine-structure "
        "inputs (lag increments, octave band powers; smooth-L1 in log units), so the student keeps what its input said "
        "at every scale even where no teacher asks for it (0: off, the paper's objective; > 0 needs a student with "
        "structure_lags or structure_bands).",
    )
    target_standardisation: Literal["corpus", "source"] = Field(
        "corpus",
        description="Units of the token losses' errors. Targets are standardised per feature over the whole "
        "pretraining corpus; `source` also measures each batch's errors (prediction and target shifted and divided "
        "alike) in units of its own data set's mean and spread of that feature, so the differences within one data "
        "set, which a probe of one data set reads, weigh as much as the larger differences between data sets. The "
        "frame the heads predict in stays the corpus's, so the student need not know the source.",
    )
    token_target: Literal["tokens", "deviations"] = Field(
        "tokens",
        description="What the per-token losses compare: `tokens`, each teacher token as it is (the paper's); or "
        "`deviations`, each token minus its series' mean over valid tokens, for prediction and target alike, so the "
        "token losses spend the student's capacity on what changes within a series (a chirp, a call) and leave the "
        "series' overall level to the summary loss (use with summary_weight > 0).",
    )
    max_target_tokens: int = Field(
        256, ge=1,
        description="A teacher grid with more tokens than this (long segments) is average-pooled by the smallest "
        "integer factor that fits, so the student's forced token count and attention stay bounded.",
    )
    batch_size: int = Field(16, ge=1, description="Segments per step.")
    max_channels: int | None = Field(
        4, ge=1,
        description="Training segments with more channels than this show the student a random subset of this many "
        "(drawn per segment and step, kept in order; targets unchanged: the teachers' features are channel "
        "averages). Bounds a step's activations by batch_size x max_channels series; validation sees every channel. "
        "None: all channels. Not with a student that has channel identities (montage_channels). 4 (default): probe "
        "scores and validation loss within run-to-run spread of all channels, 1.6x the segments/s, half the peak "
        "memory (docs/experiments.md).",
    )
    max_steps: int = Field(1200, ge=1, description="Optimisation steps (1200 fit the 20-minute default on 2 cores).")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps before the cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of lr.")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")
    seed: int = Field(0, description="Seed of initialisation, shuffling and crops.")
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="Training device (auto: cuda if present).")
    bf16: bool = Field(False, description="bf16 autocast for forward passes.")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Held-out fraction of segments for validation.")
    val_every: int = Field(100, ge=1, description="Steps between validation losses.")
    checkpoint_every: int = Field(200, ge=1, description="Steps between checkpoints.")
    shuffle_blocks: int = Field(4, ge=1, description="Store chunks mixed in the shuffle buffer.")
    prefetch_blocks: int = Field(2, ge=0, description="Store chunks the background loader reads ahead of the shuffle buffer in use.")
    crop: CropParams = Field(default_factory=CropParams, description="Crop-consistent augmentation.")
    output_dir: str = Field("models/step-student", description="Where the trained encoder is saved (HF format).")
    checkpoint_dir: str = Field("models/checkpoints", description="Checkpoints for --resume.")
    reports_dir: str = Field("reports", description="Metrics (JSON/CSV) and plots.")


class EvaluateParams(Section):
    datasets: list[str] | None = Field(None, description="Probe tasks (default: every probe data set).")
    splits: int = Field(
        10, ge=1,
        description="K train/test splits per task: the declared split (official for real data), then K-1 seeded "
        "stratified resplits with the same test size; the same splits for every model.",
    )
    probe_alphas: list[float] = Field(
        [10.0**e for e in range(-2, 5)], min_length=1,
        description="Ridge penalties the probe chooses from, by leave-one-out on each train split (every model "
        "gets the same grid).",
    )
    pooling: str | None = Field(
        None,
        description="How token features become one vector, for the student and the teachers alike: '+'-joined "
        "parts of mean, std, max, stats (see STEPEncoder.embed), or `pooled` (the student's LayerNorm(mean); "
        "teachers then get the mean). None: the distilled model's config.embedding_pooling.",
    )
    batch_size: int = Field(32, ge=1, description="Embedding batch size.")
    minirocket_features: int = Field(
        10_000, ge=0,
        description="Features of the `baseline-minirocket` row (MiniRocket on the whole series, the anchor users "
        "would pick instead; the paper's 10,000); 0 leaves the row out.",
    )
    minirocket_max_length: int = Field(
        4096, ge=16,
        description="Series longer than this are linearly resampled to it for the `baseline-minirocket` row (its cost "
        "grows with length x features: 10,000 features over 400 series of 16,384 samples take ~8 minutes on one CPU "
        "core); shorter sets are resampled to their own longest length.",
    )
    seed: int = Field(0, description="Seed of the random-weight student and of the resplits.")
    reports_dir: str = Field("reports", description="Where metrics, tables and plots are written.")


class FinetuneParams(Section):
    """The paper's protocol, done as LP-FT (pipeline/finetune.py): a linear probe's head first, then the encoder
    fine-tuned end to end; the distilled student against the same architecture from random weights.

    The default is sized for `dvc repro` (4 splits, ~5 minutes on 2 CPU cores); the `long` setting of
    docs/finetuning.md (splits: 10, evaluate's splits) gives the probe table's intervals; `tune: all` fine-tunes end
    to end.
    """

    datasets: list[str] | None = Field(None, description="Probe tasks (default: every probe data set).")
    splits: int = Field(
        4, ge=1, description="Splits fine-tuned per task: the first of evaluate's splits (1 = the declared split). "
        "With more than one, every difference gets a paired interval (at 2 its half-width is 15.6 standard "
        "deviations of the per-split differences, at 4 it is 3.6)."
    )
    epochs: float = Field(4.0, gt=0, description="Budget: passes over the train fold (the train split less its "
                          "validation fold), capped by max_steps; the same for both models.")
    max_steps: int = Field(60, ge=1, description="Cap on the optimisation steps per model, task and split.")
    batch_size: int = Field(16, ge=1, description="Series per step.")
    head_lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate of the head (linear warm-up, cosine "
                           "decay to 0).")
    encoder_lr: float = Field(1e-5, ge=0, description="Peak AdamW learning rate of the encoder: 100 times below "
                              "the head's, so the pretrained features move little (LP-FT): at 1e-4 the validation "
                              "score of the probe's head fell by half in the first 10 steps (docs/finetuning.md); "
                              "0 freezes it.")
    tune: Literal["blocks", "all"] = Field(
        "blocks", description="Which encoder weights FT trains: `blocks` = the Transformer blocks, final LayerNorms "
        "and embedding projection, with the patching, fine structure and front end frozen, so their outputs are "
        "computed once per series (the default run's budget); `all` = end to end, every weight (several times "
        "slower on long series)."
    )
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up linearly.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (encoder and head).")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each train split held out (stratified) to "
                                "pick the stopping step; the test split is never seen.")
    evaluations: int = Field(4, ge=1, description="Validation checkpoints, evenly spaced over the steps; step 0 "
                             "(the linear probe's head on the frozen encoder) is always one of the candidates.")
    min_gain: float = Field(0.1, ge=0, description="A fine-tuned step is chosen only if it beats step 0 (the "
                            "probe) by this much of the task's metric on the validation fold: trained on the fold only "
                            "and picked by it, gains of 0.03-0.08 there turned into test losses (docs/finetuning.md).")
    min_validation: int = Field(30, ge=1, description="Fewest validation series for FT to run: on a smaller fold "
                                "one series moves the metric by about min_gain, so the probe is kept (on 10 and 15 "
                                "validation series the chosen steps lost 0.03-0.10 on test, docs/finetuning.md).")
    seed: int = Field(0, description="Seed of the validation folds, the scratch model's initialisation and the "
                      "batches.")
    save_dir: str | None = Field(None, description="If set, the fine-tuned distilled model of split 0 of every task "
                                 "is saved to <save_dir>/<task> in Hugging Face format (config.json + "
                                 "model.safetensors, a STEPForClassification); None: nothing is saved.")
    reports_dir: str = Field("reports", description="Where finetune_metrics.json and finetune/ go.")


class Params(Section):
    """The whole params.yaml."""

    prepare: PrepareParams = Field(default_factory=PrepareParams, description="`step-pipeline prepare`.")
    corpus: CorpusParams = Field(default_factory=CorpusParams, description="Size of the pretraining corpus.")
    segments: SegmentParams = Field(default_factory=SegmentParams, description="Segmenting of long series.")
    extract: ExtractParams = Field(description="`step-pipeline extract`.")
    student: StudentParams = Field(default_factory=StudentParams, description="The student architecture.")
    distill: DistillParams = Field(default_factory=DistillParams, description="`step-pipeline distill`.")
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams, description="`step-pipeline evaluate`.")
    finetune: FinetuneParams = Field(default_factory=FinetuneParams, description="`step-pipeline finetune`.")

    @model_validator(mode="after")
    def _teacher_weights_name_teachers(self):
        unknown = sorted(set(self.distill.teacher_weights) - set(self.extract.teachers))
        if unknown:
            raise ValueError(f"distill.teacher_weights names {unknown}, which are not teachers in extract.teachers "
                             f"({sorted(self.extract.teachers)})")
        return self


def load_params(path: str | Path = "params.yaml") -> Params:
    return load_yaml_model(path, Params)
