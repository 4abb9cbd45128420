"""DVC stage `prepare`: materialise the catalog's generated data sets into the series store, the pretraining sets
sized by params `corpus`."""

import logging
import math

from data_catalog.catalog import apply_corpus, length_range, load_catalog, mark_scaled_groups
from data_catalog.series_store import prepare
from schemas.catalog import CatalogEntry, GeneratorSource
from schemas.loading import ConfigError
from schemas.params import Params, load_params

log = logging.getLogger(__name__)


def check_token_grids(entries: list[CatalogEntry], params: Params, source_name: str) -> None:
    """Refuse, before anything is generated, a set whose length range would give one teacher several token grids.

    A feature-store group holds one token rate per teacher, and a teacher that decimates long inputs by
    ceil(length / max_steps) (fracast) gives segments of different decimation factors different rates; so does
    cutting series of different lengths at segments.max_samples. extract would stop on such a set after minutes."""
    max_samples = params.segments.max_samples
    for entry in entries:
        lengths = length_range(entry)
        if lengths is None or lengths[0] == lengths[1]:
            continue
        low, high = lengths
        if high > max_samples:
            raise ConfigError(f"{source_name}: corpus.sources.{entry.name}: lengths {low}..{high} exceed "
                              f"segments.max_samples {max_samples}, so their segments differ in length and token "
                              "grid; keep max_length <= segments.max_samples or min_length == max_length")
        for name, spec in params.extract.teachers.items():
            steps = getattr(spec, "max_steps", None)
            if steps and math.ceil(low / steps) != math.ceil(high / steps):
                raise ConfigError(
                    f"{source_name}: corpus.sources.{entry.name}: lengths {low}..{high} are decimated by teacher "
                    f"{name!r} (max_steps {steps}) by factors {math.ceil(low / steps)}..{math.ceil(high / steps)}, "
                    "which gives one data set several token grids; keep the range within one band "
                    f"({steps}(k-1), {steps}k], or min_length == max_length")


def run(params_path: str = "params.yaml") -> None:
    params = load_params(params_path)
    declared = load_catalog(params.prepare.catalog)
    catalog = apply_corpus(declared, params.corpus, params_path)
    pairs = [(before, after) for before, after in zip(declared.datasets, catalog.datasets)
             if isinstance(after.source, GeneratorSource)]
    generated = [after for _, after in pairs]
    check_token_grids([entry for entry in generated if entry.role == "pretrain"], params, params_path)
    rebuilt = prepare(params.prepare.series_store, generated, params.prepare.chunk_samples)
    mark_scaled_groups(params.prepare.series_store, [b for b, _ in pairs], generated, params.corpus)
    pretrain = [entry for entry in generated if entry.role == "pretrain"]
    log.info("series store %s: %d data sets, %d rebuilt; pretraining corpus %d series in %d sets (scale %g)",
             params.prepare.series_store, len(generated), len(rebuilt), sum(e.source.count for e in pretrain),
             len(pretrain), params.corpus.scale)
