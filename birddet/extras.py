"""Optional dependencies: the libraries of the field that only some commands need.

Video needs PyAV, rasters and GIS files need rasterio/pyogrio/shapely/pyproj, export needs onnx/onnxruntime. They are
optional extras so that a plain `pip install birddet` stays light; a command that needs one and does not find it
stops with an `InputError` that names the extra to install, never with a bare ImportError deep in a run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from birddet.errors import InputError

# extra -> the modules it provides, and what it is for (said in the error).
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "video": (("av",), "reading video files"),
    "geo": (("rasterio", "pyogrio", "shapely", "pyproj"), "GeoTIFF rasters and GIS files"),
    "onnx": (("onnx", "onnxruntime"), "ONNX export and onnxruntime inference"),
}


def require(extra: str, module: str) -> ModuleType:
    """Import `module` from the optional `extra`, or raise an InputError that says how to install it."""
    mods, purpose = EXTRAS[extra]
    if module not in mods:
        raise KeyError(f"{module!r} is not part of the {extra!r} extra ({', '.join(mods)})")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise InputError(
            f"{purpose} needs the optional '{extra}' dependencies ({module} is not installed: {e}); "
            f"install them with: pip install 'birddet[{extra}]'"
        ) from e
