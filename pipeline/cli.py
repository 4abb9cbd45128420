"""The `step-pipeline` command line: one subcommand per pipeline stage, plus catalog and store tools.

Options take their help text from the pydantic field descriptions in schemas/, so there is one source of truth.
Heavy modules (torch, transformers, zarr, the schemas' pydantic models) are imported inside the commands that use
them, so `--help`, `catalog`, `params` and `inspect` start fast (bench/startup.py).
"""

import ast
import functools
import importlib
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help=__doc__.splitlines()[0], no_args_is_help=True, pretty_exceptions_show_locals=False)
catalog_app = typer.Typer(help="List, show and validate the declared data sets.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
console = Console(width=None if sys.stdout.isatty() else 200)  # no truncated tables in logs/pipes

def doc(module: str, model: str, field: str, prefix: str = "Override: ") -> str:
    """An option's help text: the description of the pydantic field it overrides (one source of truth).

    Read from the schema module's source rather than by importing it: importing schemas.params builds every
    pydantic model (~0.5 s), which every `--help` would pay. A description that is not a plain string literal is
    taken from the imported model instead. tests/test_structure.py checks both ways give the same text.
    """
    description = _literal_description(_schema_classes(module), model, field)
    if description is None:
        description = getattr(importlib.import_module(module), model).model_fields[field].description
    return prefix + description


@functools.cache
def _schema_classes(module: str) -> dict[str, ast.ClassDef]:
    source = Path(importlib.util.find_spec(module).origin).read_text()
    return {node.name: node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}


def _literal_description(classes: dict[str, ast.ClassDef], model: str, field: str) -> str | None:
    """`Field(description="...")` of `field` in class `model` or its bases (same module), if a literal."""
    node = classes.get(model)
    if node is None:
        return None
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and getattr(statement.target, "id", None) == field:
            value = statement.value
            keywords = value.keywords if isinstance(value, ast.Call) else []
            for keyword in keywords:
                if keyword.arg == "description":
                    try:
                        return ast.literal_eval(keyword.value)
                    except ValueError:
                        return None
            return None
    for base in node.bases:
        if isinstance(base, ast.Name) and (found := _literal_description(classes, base.id, field)) is not None:
            return found
    return None


ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read (validated by schemas.params).")]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def fail(message: str) -> None:
    """Print a clear, unwrapped error (it names the file/field/series) and exit with status 2."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _catalog(path: Optional[Path], params: Path):
    from data_catalog.catalog import load_catalog
    from schemas.loading import ConfigError
    from schemas.params import load_params

    try:
        if path is None:
            path = Path(load_params(params).prepare.catalog) if params.exists() else None
        return load_catalog(path) if path else load_catalog()
    except ConfigError as exc:
        fail(str(exc))


CatalogOption = Annotated[Optional[Path], typer.Option("--catalog", help="Catalog file (default: from params).")]


@catalog_app.command("list")
def catalog_list(catalog: CatalogOption = None, params: ParamsOption = Path("params.yaml")) -> None:
    """A table of the data sets: name, domain, role, count, length range, rate, channels."""
    from data_catalog.catalog import open_reader
    from schemas.params import load_params

    cat = _catalog(catalog, params)
    series_store = load_params(params).prepare.series_store if params.exists() else "data/series.zarr"
    table = Table("name", "domain", "role", "count", "length", "rate (Hz)", "channels", "unit")
    for entry in cat.datasets:
        try:
            reader = open_reader(entry, cat, series_store)
            lengths = reader.lengths[reader.lengths >= 0]
            count = str(len(reader))
            length = f"{lengths.min()}-{lengths.max()}" if len(lengths) else "?"
        except Exception:  # not prepared yet, or files absent: show what the catalog declares
            count = str(getattr(entry.source, "count", "?"))
            length = "(not prepared)"
        rate = f"{entry.sampling_rate:g}" if isinstance(entry.sampling_rate, float) else str(entry.sampling_rate)
        table.add_row(entry.name, entry.domain, entry.role, count, length, rate,
                      str(entry.channels), entry.unit)
    console.print(table)


@catalog_app.command("show")
def catalog_show(name: str, catalog: CatalogOption = None, params: ParamsOption = Path("params.yaml")) -> None:
    """Print one catalog entry in full (YAML)."""
    import yaml

    cat = _catalog(catalog, params)
    try:
        entry = cat.get(name)
    except KeyError as exc:
        fail(str(exc.args[0]))
    console.print(yaml.safe_dump(entry.model_dump(mode="json"), sort_keys=False), highlight=False)


@catalog_app.command("validate")
def catalog_validate(file: Annotated[Optional[Path], typer.Argument(help="Catalog file.")] = None,
                     params: ParamsOption = Path("params.yaml")) -> None:
    """Validate a catalog file; errors name the file, the field path and what is wrong."""
    cat = _catalog(file, params)
    console.print(f"ok: {len(cat.datasets)} data sets")


@app.command()
def prepare(params: ParamsOption = Path("params.yaml")) -> None:
    """Materialise the generated data sets into the Zarr series store (skips those already up to date)."""
    from schemas.loading import ConfigError
    from stages import prepare as stage

    try:
        stage.run(str(params))
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def extract(
    teacher: Annotated[Optional[list[str]], typer.Option("--teacher", help="Teacher(s) from params extract.teachers "
                                                         "(default: all).")] = None,
    dataset: Annotated[Optional[list[str]], typer.Option("--dataset", help="Data set(s) (default: params "
                                                         "extract.datasets, else every catalog data set).")] = None,
    device: Annotated[Optional[str], typer.Option(help=doc("schemas.teachers", "FracastTeacher", "device"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=doc("schemas.teachers", "FracastTeacher",
                                                               "batch_size"))] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a store made with another configuration "
                                            "(otherwise it is refused).")] = False,
    scheduler: Annotated[Optional[str], typer.Option(help="Run on this dask.distributed scheduler (e.g. "
                                                     "tcp://10.0.0.5:8786); workers must see the stores.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Run on a local dask cluster of this many "
                                                   "worker processes.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Stream every segment through a teacher into its Zarr feature store (resumes where a run stopped)."""
    from data_catalog.readers import DataError
    from pipeline.extract import ExtractionIOError, TeacherBatchError
    from pipeline.feature_store import StoreLockedError, StoreMismatchError
    from schemas.loading import ConfigError
    from stages import extract as stage

    try:
        if scheduler is not None and workers is not None:
            fail("pass --scheduler (an existing cluster) or --workers (a local one), not both")
        stage.run(str(params), teacher, dataset, overwrite=overwrite, device=device, batch_size=batch_size,
                  scheduler=scheduler, workers=workers)
    except (ConfigError, DataError, StoreMismatchError, StoreLockedError, FileNotFoundError, TeacherBatchError,
            ExtractionIOError) as exc:
        fail(str(exc))


@app.command()
def inspect(
    path: Annotated[str, typer.Argument(help="A feature store: data/features/<teacher>.zarr or an fsspec URL "
                                        "(s3://bucket/features/<teacher>.zarr).")],
    plot: Annotated[Optional[Path], typer.Option(help="Also draw feature statistics to this PNG.")] = None,
) -> None:
    """Groups, dims, chunking, codec, size on disk, compression ratio, manifest and feature statistics."""
    from pipeline.feature_store import describe_store, plot_store

    try:
        console.print(describe_store(path), highlight=False)
    except (FileNotFoundError, ValueError) as exc:  # no store there, or one we refuse to read
        fail(str(exc))
    if plot is not None:
        plot_store(path, plot)
        console.print(f"plot written to {plot}")


@app.command()
def distill(
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint (same result as an unbroken run).")] = False,
    device: Annotated[Optional[str], typer.Option(help=doc("schemas.params", "DistillParams", "device"))] = None,
    max_steps: Annotated[Optional[int], typer.Option(help=doc("schemas.params", "DistillParams", "max_steps"))] = None,
    nproc: Annotated[int, typer.Option(min=1, help="Data-parallel processes on this machine (started with "
                                       "torchrun; DDP, gloo on CPU, nccl on GPU).")] = 1,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Train the STEP student from the feature stores (no teacher is loaded) into distill.output_dir."""
    from pipeline.distill.loader import StoreCoverageError
    from pipeline.distill.train import NonFiniteLossError
    from schemas.loading import ConfigError
    from stages import distill as stage

    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # relaunch this command under torchrun, once per rank
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "pipeline.cli", "distill", "--params", str(params)]
        command += ["--resume"] * resume + (["--device", device] if device else [])
        command += ["--max-steps", str(max_steps)] if max_steps is not None else []
        raise typer.Exit(code=subprocess.run(command).returncode)
    try:
        stage.run(str(params), resume=resume, device=device, max_steps=max_steps)
    except (ConfigError, StoreCoverageError, NonFiniteLossError, FileNotFoundError) as exc:
        fail(str(exc))


@app.command()
def evaluate(
    params: ParamsOption = Path("params.yaml"),
    update_readme: Annotated[Optional[Path], typer.Option(help="Only rewrite this README's results block from "
                                                          "the existing reports (no evaluation).")] = None,
) -> None:
    """Linear probes on frozen embeddings, K splits per task: distilled vs random student vs teachers vs baseline."""
    from schemas.loading import ConfigError
    from stages import evaluate as stage

    try:
        if update_readme is not None:
            from pipeline.evaluate import update_readme as rewrite
            from schemas.params import load_params

            rewrite(update_readme, Path(load_params(params).evaluate.reports_dir))
            return
        stage.run(str(params))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))


@app.command()
def finetune(params: ParamsOption = Path("params.yaml")) -> None:
    """The paper's protocol: the distilled student and a random-weight one fine-tuned end to end on every task."""
    from schemas.loading import ConfigError
    from stages import finetune as stage

    try:
        stage.run(str(params))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))


@app.command()
def ablations(
    action: Annotated[str, typer.Argument(help="`run`: every variant as a DVC experiment; `table`: print the table.")],
    name: Annotated[Optional[list[str]], typer.Option(help="Only these variants (repeatable).")] = None,
) -> None:
    """The recipe's ablations (pipeline/ablations.py) as DVC experiments, and their Markdown table."""
    from pipeline import ablations as recipe

    if action == "run":
        try:
            recipe.run(name)
        except (ValueError, subprocess.CalledProcessError) as exc:
            fail(str(exc))
    elif action == "table":
        typer.echo(recipe.table(), nl=False)
    else:
        fail(f"unknown action {action!r}: expected run or table")


@app.command()
def embed(
    model: Annotated[Path, typer.Option(help="A trained encoder directory (Hugging Face format).")],
    output: Annotated[Path, typer.Option(help="Zarr store to write (embedding (series, hidden), series_id).")],
    input: Annotated[Optional[Path], typer.Option(help=".npy/.npz file of series.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="A catalog data set instead of a file.")] = None,
    sampling_rate: Annotated[Optional[float], typer.Option(help="Sampling rate of --input, Hz.")] = None,
    stacked: Annotated[bool, typer.Option(help="--input .npy holds many series along its first axis: (series, "
                                          "time) or (series, channels, time), as the catalog's `stacked: true`. "
                                          "Without it a 2-D array is one (channels, time) series.")] = False,
    batch_size: Annotated[int, typer.Option(help="Series per forward pass.")] = 32,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Embed every series of a file or catalog data set with a trained STEP encoder into a Zarr store."""
    from data_catalog.readers import DataError
    from pipeline.embed import embed_to_store, series_from_file
    from pipeline.student import STEPEncoder

    if (input is None) == (dataset is None):
        fail("give exactly one of --input FILE or --dataset NAME")
    if not (model / "config.json").exists():
        fail(f"{model}: not a model directory (no config.json); run `step-pipeline distill` first")
    encoder = STEPEncoder.from_pretrained(model).eval()
    keep_channels = False
    if input is not None:
        if not input.exists():
            fail(f"{input}: no such file")
        series = series_from_file(input, sampling_rate, stacked=stacked)
    else:
        from data_catalog.catalog import open_reader
        from schemas.params import load_params

        cat = _catalog(None, params)
        try:
            entry = cat.get(dataset)
        except KeyError as exc:
            fail(str(exc.args[0]))
        series = iter(open_reader(entry, cat, load_params(params).prepare.series_store))
        keep_channels = entry.fixed_montage  # a fixed montage: channels kept apart
    try:
        embed_to_store(encoder, series, output, batch_size=batch_size, keep_channels=keep_channels)
    except (DataError, ValueError) as exc:
        fail(str(exc))
    console.print(f"embeddings written to {output}")


@app.command("params")
def params_doc() -> None:
    """Every params.yaml field with its default and description (from schemas/params.py)."""
    from pydantic import BaseModel

    from schemas.params import Params

    table = Table("field", "default", "description")

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
                continue
            default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
            table.add_row(prefix + name, default, field.description or "")

    walk(Params, "")
    console.print(table)


if __name__ == "__main__":  # `python -m pipeline.cli`, what torchrun starts for `distill --nproc N`
    app()
