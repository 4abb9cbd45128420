"""The STEP student encoder, in Hugging Face format and registered with the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from pipeline.student.configuration_step import PRESETS, STEPConfig
from pipeline.student.classifier import STEPForClassification
from pipeline.student.modeling_step import STEPEncoder, STEPEncoderOutput

AutoConfig.register("step", STEPConfig)
AutoModel.register(STEPConfig, STEPEncoder)
AutoModelForSequenceClassification.register(STEPConfig, STEPForClassification)

__all__ = ["PRESETS", "STEPConfig", "STEPEncoder", "STEPEncoderOutput", "STEPForClassification"]
