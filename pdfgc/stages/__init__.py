"""The progressive stages of PD-FGC, one LightningModule each (see docs/training.md)."""

from pdfgc.stages.base import EXPORT_FILES, StageModule
from pdfgc.stages.emotion import EmotionGeneratorStage
from pdfgc.stages.fine_motion import FineMotionStage
from pdfgc.stages.identity import IdentityStage
from pdfgc.stages.landmarks import LandmarkStage
from pdfgc.stages.unified_motion import UnifiedMotionStage

__all__ = [
    "EXPORT_FILES",
    "StageModule",
    "IdentityStage",
    "LandmarkStage",
    "UnifiedMotionStage",
    "FineMotionStage",
    "EmotionGeneratorStage",
]
