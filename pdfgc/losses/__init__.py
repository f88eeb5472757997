"""Training losses of the three PD-FGC stages.

| paper symbol | function / class | module |
|---|---|---|
| L_gan (D and G sides) | `discriminator_hinge_loss`, `generator_hinge_loss` | `gan` |
| L_fm (GAN feature matching) | `feature_matching_loss` | `gan` |
| L_vgg | `VGGPerceptualLoss` | `perceptual` |
| L_a2v + L_v2a | `audio_visual_infonce` | `contrastive` |
| L_eye | `eye_triplet_loss` | `contrastive` |
| L_decor | `decorrelation_loss`, `MemoryBank` | `decorrelation` |
| L_leak (ours) | `linear_leakage`, `LinearLeakage` | `leakage` |
| L_mouth | `mouth_region_l1` (and `paste_strip` for eye triplets) | `masks` |

Loss weights are applied by the stage modules, never here.
"""

from pdfgc.losses.contrastive import (
    DEFAULT_EYE_TEMPERATURE,
    DEFAULT_INFONCE_TEMPERATURE,
    audio_visual_infonce,
    eye_triplet_loss,
    pairwise_similarity,
)
from pdfgc.losses.decorrelation import MemoryBank, cross_correlation, decorrelation_loss
from pdfgc.losses.leakage import LinearLeakage, linear_leakage
from pdfgc.losses.gan import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from pdfgc.losses.masks import EYE_STRIP, MOUTH_BOX, box_mask, mouth_region_l1, paste_strip
from pdfgc.losses.perceptual import UntrainedVGGWarning, VGGPerceptualLoss

__all__ = [
    "discriminator_hinge_loss",
    "generator_hinge_loss",
    "feature_matching_loss",
    "VGGPerceptualLoss",
    "UntrainedVGGWarning",
    "audio_visual_infonce",
    "eye_triplet_loss",
    "pairwise_similarity",
    "DEFAULT_INFONCE_TEMPERATURE",
    "DEFAULT_EYE_TEMPERATURE",
    "MemoryBank",
    "decorrelation_loss",
    "cross_correlation",
    "LinearLeakage",
    "linear_leakage",
    "MOUTH_BOX",
    "EYE_STRIP",
    "box_mask",
    "mouth_region_l1",
    "paste_strip",
]
