"""The networks: VanillaNet variants, their deploy fusion, checkpoints and the ResNet baselines.

``archs`` holds the variant tables as data (no torch); ``model`` and ``baselines`` the
modules; ``fusion`` the deploy fusion; ``checkpoint`` safe loading; ``zoo`` creation by name.
"""

from .archs import MODEL_NAMES, VARIANTS, ModelSpec, VanillaNetArch

__all__ = ["MODEL_NAMES", "VARIANTS", "ModelSpec", "VanillaNetArch"]
