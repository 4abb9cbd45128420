"""step-pipeline: STEP encoders for scientific time series, distilled from cached teacher features."""

from pipeline.student import STEPConfig, STEPEncoder

__all__ = ["STEPConfig", "STEPEncoder"]
__version__ = "0.1.0"
