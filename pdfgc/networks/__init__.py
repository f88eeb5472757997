"""PD-FGC's networks, each defined once; sizes come from ``configs/networks/*.yaml``.

=====================================  =====  ==================================================
class                                  paper  contract
=====================================  =====  ==================================================
:class:`AppearanceEncoder`             E_app  ``img (B,3,S,S) -> (id_vec (B,2048), id_map (B,512,m,m))``
:class:`MotionEncoder`                 E_mot  ``img -> (pose (B,6), eye (B,6), emotion (B,30), mouth_feature (B,512))``
:class:`AudioEncoder`                  E_aud  ``mel (B,1,80,20) -> (feature (B,512), mouth (B,500))``
:class:`Generator`                     G      ``(style (B,style_dim), id_map) -> (B,3,S,S)`` in [-1, 1]
:class:`MultiScaleDiscriminator`       D      ``img -> [[features...] per scale]``
=====================================  =====  ==================================================
"""

from . import codes
from .appearance_encoder import AppearanceEncoder
from .audio_encoder import AudioEncoder
from .build import Networks, build_networks, load_networks_config
from .codes import compose_style, split_style
from .discriminator import MultiScaleDiscriminator, PatchDiscriminator
from .generator import Generator
from .motion_encoder import MotionEncoder

__all__ = [
    "AppearanceEncoder", "AudioEncoder", "Generator", "MotionEncoder", "MultiScaleDiscriminator",
    "PatchDiscriminator", "Networks", "build_networks", "load_networks_config", "codes",
    "compose_style", "split_style",
]
