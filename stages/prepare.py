"""DVC stage `prepare`: materialise the catalog's generated data sets into the series store."""

import logging

from data_catalog.catalog import load_catalog
from data_catalog.series_store import prepare
from schemas.catalog import GeneratorSource
from schemas.params import load_params

log = logging.getLogger(__name__)


def run(params_path: str = "params.yaml") -> None:
    params = load_params(params_path).prepare
    catalog = load_catalog(params.catalog)
    generated = [entry for entry in catalog.datasets if isinstance(entry.source, GeneratorSource)]
    rebuilt = prepare(params.series_store, generated, params.chunk_samples)
    log.info("series store %s: %d data sets, %d rebuilt", params.series_store, len(generated), len(rebuilt))
