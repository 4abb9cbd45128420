"""step-pipeline: STEP encoders for scientific time series, distilled from cached teacher features.

Importing `pipeline` is cheap on purpose: the student (torch, transformers) is imported only when it is used, so
`step-pipeline --help`, `catalog`, `params` and `inspect` start fast. Two things still work as if it were eager:

- `from pipeline import STEPEncoder, STEPConfig` (module `__getattr__`, PEP 562);
- `import pipeline` then `transformers.AutoModel.from_pretrained(saved_student)`: the student registers with
  transformers' Auto classes when `pipeline.student` is imported, so we import it as soon as transformers is
  imported (a one-shot import hook), or now if transformers already is.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["STEPConfig", "STEPEncoder"]
__version__ = "0.1.0"

_STUDENT_NAMES = {"STEPConfig", "STEPEncoder"}


def __getattr__(name: str):
    """The student's classes, imported on first use."""
    if name in _STUDENT_NAMES:
        return getattr(importlib.import_module("pipeline.student"), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


class _RegisterStudentWithTransformers(importlib.abc.MetaPathFinder):
    """Once transformers is imported, import pipeline.student, which registers STEP with the Auto classes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot; also lets find_spec below use the ordinary finders
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_transformers = spec.loader.exec_module

        def exec_then_register(module):
            exec_transformers(module)
            importlib.import_module("pipeline.student")

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    importlib.import_module("pipeline.student")
elif not any(isinstance(finder, _RegisterStudentWithTransformers) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterStudentWithTransformers())
