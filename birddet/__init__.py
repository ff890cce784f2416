"""birddet: find birds in images and name their species.

Public entry points are imported lazily so that `import birddet` stays fast and light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_backbone", "load_detector"]


def __getattr__(name: str) -> Any:
    if name == "load_backbone":
        from birddet.backbone.weights import load_backbone

        return load_backbone
    if name == "load_detector":
        from birddet.engine.checkpoint import load_detector

        return load_detector
    raise AttributeError(f"module 'birddet' has no attribute {name!r}")
