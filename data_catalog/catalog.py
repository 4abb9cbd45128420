"""Load and check the catalog, and open the reader of a data set."""

from pathlib import Path

from data_catalog.readers import FileReader, SeriesReader, SeriesStoreReader
from schemas.catalog import Catalog, CatalogEntry, GeneratorSource
from schemas.loading import ConfigError, load_yaml_model

DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")


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
    for field, value in declared.items():
        if value != actual[field]:
            raise ConfigError(f"{where}.{field}: is {value!r} but generator {spec.name} produces {actual[field]!r}")
    if entry.probe is not None and tuple(entry.probe.class_names) != tuple(spec.class_names):
        raise ConfigError(f"{where}.probe.class_names: {entry.probe.class_names} but generator {spec.name} "
                          f"labels {list(spec.class_names)}")


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> Catalog:
    """The validated catalog; every problem is reported with the file and field path."""
    catalog = load_yaml_model(path, Catalog)
    for entry in catalog.datasets:
        if isinstance(entry.source, GeneratorSource):
            check_generator_entry(entry, str(path))
    return catalog


def open_reader(entry: CatalogEntry, catalog: Catalog, series_store: str | Path) -> SeriesReader:
    """Generated sets are read from the prepared series store; file sets in place under data_root."""
    if isinstance(entry.source, GeneratorSource):
        return SeriesStoreReader(entry, series_store)
    return FileReader(entry, Path(catalog.data_root))
