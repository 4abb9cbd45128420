"""The code's shape: imports run one way between the modules that used to import each other, no module is
too long to read, and `import pipeline` (what every command pays) stays free of torch and transformers."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("pipeline", "data_catalog", "schemas", "stages")
MAX_LINES = 600
UNTIED_PAIRS = [("data_catalog.readers", "data_catalog.series_store"), ("pipeline.extract", "pipeline.cluster")]


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file: at module level and inside functions.

    `from package import name` counts as importing package.name when that is a module."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in known}


def test_import_circles_are_untied():
    modules = project_modules()
    imports = {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}
    for a, b in UNTIED_PAIRS:
        assert a in modules and b in modules, f"{a} or {b} no longer exists: update this test"
        both_ways = b in imports[a] and a in imports[b]
        assert not both_ways, f"{a} and {b} import each other: move what both need into a module both import"


def test_no_module_is_over_600_lines():
    too_long = {str(path.relative_to(ROOT)): n for path in project_modules().values()
                if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job): {too_long}"


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter (what a user's process sees) and return the JSON it prints last."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_pipeline_and_the_cli_load_neither_torch_nor_transformers():
    loaded = run_python(
        "import json, sys\n"
        "import pipeline\n"
        "after_pipeline = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "import pipeline.cli\n"
        "after_cli = sorted({'torch', 'transformers', 'schemas.params'} & set(sys.modules))\n"
        "print(json.dumps({'pipeline': after_pipeline, 'cli': after_cli}))\n"
    )
    assert loaded == {"pipeline": [], "cli": []}


@pytest.mark.parametrize("module, model", [("schemas.teachers", "FracastTeacher"), ("schemas.params", "DistillParams")])
def test_cli_help_texts_read_from_source_equal_the_pydantic_descriptions(module, model):
    """The CLI reads option help from the schemas' source (not importing them keeps --help fast): same text."""
    import importlib

    from pipeline.cli import doc

    fields = getattr(importlib.import_module(module), model).model_fields
    described = {name: info.description for name, info in fields.items() if info.description is not None}
    assert described
    assert {name: doc(module, model, name, prefix="") for name in described} == described


@pytest.fixture(scope="module")
def saved_tiny_student(tmp_path_factory) -> Path:
    import torch

    from pipeline.student import STEPConfig, STEPEncoder

    torch.manual_seed(0)
    config = STEPConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        patch_points=8, front_end_channels=8)
    directory = tmp_path_factory.mktemp("tiny-student")
    STEPEncoder(config).eval().save_pretrained(directory)
    return directory


@pytest.mark.parametrize("first", ["pipeline", "transformers"])
def test_automodel_loads_the_student_after_import_pipeline(saved_tiny_student, first):
    """The model card's recipe, `import pipeline` then AutoModel.from_pretrained, in either import order; and
    the student's classes as lazy attributes of `pipeline`."""
    second = "transformers" if first == "pipeline" else "pipeline"
    loaded = run_python(
        f"import json\n"
        f"import {first}\n"
        f"import {second}\n"
        f"from transformers import AutoConfig, AutoModel\n"
        f"from pipeline import STEPConfig, STEPEncoder\n"
        f"model = AutoModel.from_pretrained({str(saved_tiny_student)!r})\n"
        f"config = AutoConfig.from_pretrained({str(saved_tiny_student)!r})\n"
        f"print(json.dumps({{'model': type(model) is STEPEncoder, 'config': type(config) is STEPConfig}}))\n"
    )
    assert loaded == {"model": True, "config": True}
