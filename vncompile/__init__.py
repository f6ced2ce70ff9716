"""vncompile: an edge/mobile deployment compiler for VanillaNet.

The pipeline reads top to bottom in the package layout:
``vanillanet`` (models, fusion, checkpoints, baselines) -> ``pipeline`` (stages,
artifacts, profiling, reports) -> ``targets`` (one plugin per backend) -> ``cli``.
"""

__version__ = "0.3.0"
