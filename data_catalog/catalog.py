"""Load and check the catalog, scale its pretraining corpus, and open the reader of a data set."""

import logging
from pathlib import Path

from data_catalog.readers import FileReader, SeriesReader, SeriesStoreReader
from schemas.catalog import Catalog, CatalogEntry, GeneratorSource
from schemas.loading import ConfigError, load_yaml_model

DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")
log = logging.getLogger(__name__)


def check_generator_entry(entry: CatalogEntry, source_name: str) -> None:
    """A generator entry must declare what its generator really produces (rate, channels, unit, classes)."""
    from data_catalog.generators import GENERATORS

    source: GeneratorSource = entry.source
    where = f"{source_name}: datasets.{entry.name}"
    if source.generator not in GENERATORS:
        raise ConfigError(f"{where}.source.generator: unknown generator {source.generator!r} "
                          f"(known: {sorted(GENERATORS)})")
    spec = GENERATORS[source.generator]
    unknown = set(source.options) - set(spec.default_options)
    if unknown:
        raise ConfigError(f"{where}.source.options: unknown keys {sorted(unknown)} for {spec.name} "
                          f"(known: {sorted(spec.default_options)})")
    declared = {"sampling_rate": entry.sampling_rate, "channels": entry.channels, "unit": entry.unit}
    actual = {"sampling_rate": spec.sampling_rate, "channels": spec.channels, "unit": spec.unit}
    if spec.sampling_rate is None:  # shapes defined in samples: any declared rate, or `unknown`, fits
        if entry.sampling_rate is None:
            raise ConfigError(f"{where}.sampling_rate: generator {spec.name} has no rate of its own; declare one "
                              "(Hz) or `unknown`")
        actual["sampling_rate"] = entry.sampling_rate
    if spec.channels is None:  # the channel count is the generator's `channels` option
        actual["channels"] = int({**spec.default_options, **source.options}["channels"])
    for field, value in declared.items():
        if value != actual[field]:
            raise ConfigError(f"{where}.{field}: is {value!r} but generator {spec.name} produces {actual[field]!r}")
    if entry.probe is not None and tuple(entry.probe.class_names) != tuple(spec.class_names):
        raise ConfigError(f"{where}.probe.class_names: {entry.probe.class_names} but generator {spec.name} "
                          f"labels {list(spec.class_names)}")


def check_seed_streams(catalog: Catalog, source_name: str) -> None:
    """No pretraining set may draw from a probe set's seed stream (item i of seed s is default_rng([s, i]) in every
    generator), so no probe series, nor one made from the same random numbers, enters distillation."""
    probe_seeds = {entry.source.seed: entry.name for entry in catalog.datasets
                   if entry.role == "probe" and isinstance(entry.source, GeneratorSource)}
    for entry in catalog.datasets:
        if entry.role == "pretrain" and isinstance(entry.source, GeneratorSource) and entry.source.seed in probe_seeds:
            raise ConfigError(f"{source_name}: datasets.{entry.name}.source.seed: {entry.source.seed} is the seed of "
                              f"probe set {probe_seeds[entry.source.seed]!r}; pretraining seeds must differ from "
                              "every probe seed")


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> Catalog:
    """The validated catalog; every problem is reported with the file and field path."""
    catalog = load_yaml_model(path, Catalog)
    for entry in catalog.datasets:
        if isinstance(entry.source, GeneratorSource):
            check_generator_entry(entry, str(path))
    check_seed_streams(catalog, str(path))
    return catalog


# ---- the pretraining corpus, scaled by params.yaml `corpus` ----


def scaled_entry(entry: CatalogEntry, corpus) -> CatalogEntry:
    """`entry` as params `corpus` (schemas.params.CorpusParams) sizes it: the source's segments and lengths when
    corpus.sources names it, and its count times corpus.scale (at least one series). Probe sets and file sets are
    returned unchanged."""
    if entry.role != "pretrain" or not isinstance(entry.source, GeneratorSource):
        return entry
    from data_catalog.generators import GENERATORS

    source = entry.source
    override = corpus.sources.get(entry.name)
    count = override.segments if override else source.count
    options = dict(source.options)
    if override and (override.min_length or override.max_length):
        if "max_length" not in GENERATORS[source.generator].default_options:
            raise ConfigError(f"corpus.sources.{entry.name}: generator {source.generator} has no min_length/"
                              "max_length options")
        options |= {key: value for key, value in (("min_length", override.min_length),
                                                   ("max_length", override.max_length)) if value}
    count = max(1, int(round(count * corpus.scale)))
    if count == source.count and options == source.options:
        return entry
    return entry.model_copy(update={"source": source.model_copy(update={"count": count, "options": options})})


def length_range(entry: CatalogEntry) -> tuple[int, int] | None:
    """(min_length, max_length) of a generated set whose generator draws lengths from a range, else None."""
    if not isinstance(entry.source, GeneratorSource):
        return None
    from data_catalog.generators import GENERATORS

    options = {**GENERATORS[entry.source.generator].default_options, **entry.source.options}
    if "min_length" not in options or "max_length" not in options:
        return None
    return int(options["min_length"]), int(options["max_length"])


def apply_corpus(catalog: Catalog, corpus, source_name: str = "params") -> Catalog:
    """The catalog with its pretraining sets sized by params `corpus` (see `scaled_entry`). A source that names a
    probe set or a file set is an error; one the catalog lacks (another catalog) is skipped with a warning."""
    by_name = {entry.name: entry for entry in catalog.datasets}
    for name in corpus.sources:
        entry = by_name.get(name)
        if entry is None:
            log.warning("%s: corpus.sources.%s: no such data set in the catalog, ignored", source_name, name)
        elif entry.role != "pretrain" or not isinstance(entry.source, GeneratorSource):
            raise ConfigError(f"{source_name}: corpus.sources.{name}: only generated pretraining sets can be "
                              f"scaled; {name!r} is a {entry.role} set ({entry.source.kind})")
    scaled = [scaled_entry(entry, corpus) for entry in catalog.datasets]
    return catalog.model_copy(update={"datasets": scaled})


def prepared_entry(entry: CatalogEntry, attrs: dict | None) -> CatalogEntry:
    """The entry a prepared group was made from, given the group's attrs (None: missing or unreadable, and the
    reader says what is wrong). Every stage loads the catalog as declared, but `prepare` sizes the pretraining sets
    by params `corpus`; their groups record the declared entry's hash (attrs `corpus`), and a group made from this
    declared entry is read as the scaled entry it holds (its series count and lengths)."""
    from data_catalog.series_groups import entry_hash

    corpus = (attrs or {}).get("corpus") or {}
    if corpus.get("declared_entry_hash") == entry_hash(entry) and "entry" in attrs:
        return CatalogEntry.model_validate(attrs["entry"])
    return entry


def mark_scaled_groups(series_store: str | Path, declared: list[CatalogEntry], scaled: list[CatalogEntry],
                       corpus) -> None:
    """After `prepare`: record in each scaled group which declared entry it was sized from (see prepared_entry)."""
    import zarr

    from data_catalog.storage import StoreLocation
    from data_catalog.zarr_warnings import quiet_zarr_extension_warnings
    from data_catalog.series_groups import entry_hash
    location = StoreLocation.of(series_store)
    changed = False
    for before, after in zip(declared, scaled):
        if before is after:
            continue
        group = zarr.open_group(location.zarr_store(), mode="a", path=after.name, use_consolidated=False)
        mark = {"declared_entry_hash": entry_hash(before), "scale": corpus.scale}
        if group.attrs.get("corpus") != mark:
            group.attrs["corpus"] = mark
            changed = True
    if changed:
        with quiet_zarr_extension_warnings():
            zarr.consolidate_metadata(location.zarr_store())


def open_reader(entry: CatalogEntry, catalog: Catalog, series_store: str | Path,
                inline_io: bool = False) -> SeriesReader:
    """Generated sets are read from the prepared series store (pretraining sets as `prepare` sized them by params
    `corpus`); file sets in place under data_root. inline_io: see data_catalog.storage.InlineLocalStore."""
    return open_readers([entry], catalog, series_store, inline_io)[0]


def open_readers(entries: list[CatalogEntry], catalog: Catalog, series_store: str | Path,
                 inline_io: bool = False) -> list[SeriesReader]:
    """open_reader of each entry; the generated sets' groups are opened and their small arrays read in one zarr
    call (series_groups.open_series_groups), which is most of the cost of opening them."""
    from data_catalog.series_groups import open_series_groups

    generated = [entry.name for entry in entries if isinstance(entry.source, GeneratorSource)]
    opened = dict(zip(generated, open_series_groups(series_store, generated, inline_io))) if generated else {}
    readers = []
    for entry in entries:
        if entry.name not in opened:
            readers.append(FileReader(entry, Path(catalog.data_root)))
            continue
        group = opened[entry.name]
        prepared = prepared_entry(entry, None if isinstance(group, BaseException) else group[0])
        readers.append(SeriesStoreReader(prepared, series_store, inline_io, opened=group))
    return readers
