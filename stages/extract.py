"""DVC stage `extract@<teacher>`: one teacher's feature store over the catalog's data sets."""

import logging

from data_catalog.catalog import load_catalog
from pipeline.extract import extract
from schemas.loading import ConfigError
from schemas.params import load_params

log = logging.getLogger(__name__)


def run(params_path: str = "params.yaml", teachers: list[str] | None = None, datasets: list[str] | None = None,
        overwrite: bool = False, device: str | None = None, batch_size: int | None = None,
        scheduler: str | None = None, workers: int | None = None) -> None:
    params = load_params(params_path)
    catalog = load_catalog(params.prepare.catalog)
    names = teachers or list(params.extract.teachers)
    unknown = [name for name in names if name not in params.extract.teachers]
    if unknown:
        raise ConfigError(f"{params_path}: extract.teachers has no {unknown} (known: {list(params.extract.teachers)})")
    wanted = datasets or params.extract.datasets or [entry.name for entry in catalog.datasets]
    try:
        entries = [catalog.get(name) for name in wanted]
    except KeyError as exc:
        raise ConfigError(f"{params_path}: extract.datasets: {exc.args[0]}") from None
    for name in names:
        extract(name, params, catalog, entries, overwrite=overwrite, device=device, batch_size=batch_size,
                scheduler=scheduler, workers=workers)
