"""Read any image file a user is likely to have into one predictable form: an 8-bit RGB `PIL.Image`.

Everything downstream (albumentations, the detector, the classifier) assumes 3 channels of uint8 in display
orientation, so the odd cases are normalised here, once:

- EXIF orientation is applied (`ImageOps.exif_transpose`), so a phone photo taken in portrait is portrait.
- CMYK, YCbCr, LAB, HSV -> RGB through Pillow's converters.
- Greyscale (`L`, `1`) -> RGB by repeating the channel.
- 16-bit (`I;16*`) and 32-bit integer (`I`) images are scaled from the 0..65535 range to 0..255 (dividing by 257, so
  65535 -> 255 exactly) instead of being clipped at 255, which would turn almost every pixel white. `I` is assumed to
  hold 16-bit data because that is what Pillow gives for 16-bit TIFF/PNG variants; `F` (float) images are scaled from
  0..1 when their maximum is at most 1, otherwise treated like 16-bit data.
- Transparency (`RGBA`, `LA`, `PA`, `P` with a transparent colour) is composited on **white**: cut-out birds and
  logos are usually made to be shown on a white page, and a black background would invent dark edges around them.

Failures raise `ImageLoadError` (an `InputError`) naming the path and the reason: missing file, empty file, not an
image, truncated or corrupt data, and images above `max_pixels` (checked from the header, before decoding, so a
decompression bomb costs no memory). A truncated file is an error the user should see, not a grey stripe the model
silently trains on, so every decode here runs with Pillow's global `ImageFile.LOAD_TRUNCATED_IMAGES` off, whatever
another library in the process set it to (MegaDetector's visualisation module turns it on at import).

The per-image cap alone does not bound memory: four 140 KB PNGs of 12000 x 12000 px are each under it, yet decoded
by two DataLoader workers with prefetching they held 5.4 GB at once. `PixelBudgetBatches` adds a global cap on the
pixels decoded and in flight (see its docstring for the rule and why it holds across worker processes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from birddet.errors import InputError

__all__ = [
    "DECODE_BYTES_PER_PIXEL",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "PixelBudgetBatches",
    "TILED_MAX_IMAGE_PIXELS",
    "ImageLoadError",
    "default_decode_budget",
    "image_size",
    "load_image",
    "stored_size_and_orientation",
    "stored_to_displayed",
]

log = logging.getLogger(__name__)

# Lower than Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS, about 179 Mpx) so that our clear message, not
# Pillow's, is the one a user sees; still large enough for a 12000 x 12000 panorama.
MAX_IMAGE_PIXELS: int = 150_000_000
#: The limit when predicting tiled: survey mosaics of 20,000 x 15,000 px (300 Mpx, 900 MB decoded) are the point of
#: tiling, and the windows, not the whole image, go through the network.
TILED_MAX_IMAGE_PIXELS: int = 1_000_000_000

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

_WHITE = (255, 255, 255)


class ImageLoadError(InputError):
    """An image file that cannot be turned into RGB pixels; the message names the file and the reason."""


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    apply_exif: bool = True,
    draft: int | None = None,
) -> Image.Image:
    """Decode `path` fully and return it as an 8-bit RGB image in display orientation.

    `apply_exif=False` keeps the stored pixel orientation; the dataset uses it for annotation files that were made
    on the raw pixels (their width/height match the unrotated image). `draft` (a long side in pixels) lets a JPEG
    decode at the smallest of 1/2, 1/4, 1/8 scale whose long side is still at least that (Pillow's draft mode),
    several times faster; for previews only, since the pixels are no longer the file's.
    """
    path = Path(path)
    _check_file(path)
    with _explained_errors(path, "corrupt or truncated image data"), warnings.catch_warnings():
        # Our own size check below replaces Pillow's DecompressionBombWarning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _pillow_pixel_limit(max_pixels), Image.open(path) as img:
            _check_size(path, img.size, max_pixels)
            if draft is not None:
                scale = draft / max(img.size)
                img.draft(img.mode, (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
            img.load()  # decode everything now: a truncated file fails here, not deep inside a DataLoader
            if apply_exif:
                img = _apply_exif_orientation(path, img)
            return to_rgb8(img)


@contextlib.contextmanager
def _explained_errors(path: Path, damage: str) -> Iterator[None]:
    """Turn Pillow's exceptions into `ImageLoadError`s that say which file, what is wrong and what to do."""
    try:
        yield
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{path}: image too large to decode safely ({e}); resize it or raise max_pixels") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(
            f"{path}: not an image Pillow can read (is it really a {path.suffix or 'image'} file?); "
            "re-save it as JPEG or PNG or remove it"
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated/corrupt data as OSError ("image file is truncated"), SyntaxError or ValueError.
        raise ImageLoadError(f"{path}: {damage} ({e}); re-export or remove the file") from e


#: EXIF orientations (5-8) that swap width and height when applied.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def image_size(path: str | os.PathLike[str], *, apply_exif: bool = True) -> tuple[int, int]:
    """`(width, height)` of an image as `load_image` would return it, read from the header without decoding.

    Converters and checks need the size of thousands of images; decoding each would cost 100x more. With
    `apply_exif` the EXIF orientation is honoured, so a portrait phone photo stored as landscape pixels reports its
    portrait size, like `load_image`. Header-level failures raise `ImageLoadError`; truncated pixel data is only
    found by `load_image`.
    """
    (w, h), orientation = stored_size_and_orientation(path)
    if apply_exif and orientation in _TRANSPOSING_ORIENTATIONS:
        return h, w
    return w, h


def stored_size_and_orientation(path: str | os.PathLike[str]) -> tuple[tuple[int, int], int]:
    """`((width, height), orientation)` from the header: the stored (unrotated) size and the EXIF orientation
    (1..8, 1 when absent or unreadable), which `load_image` applies to reach the displayed image."""
    path = Path(path)
    _check_file(path)
    with _explained_errors(path, "corrupt image header"), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Reading a header decodes no pixels, so a survey image of any size may report its size.
        with _pillow_pixel_limit(TILED_MAX_IMAGE_PIXELS), Image.open(path) as img:
            w, h = img.size
            orientation = _exif_orientation(img)
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{path}: image header gives an empty size {w}x{h}")
    return (w, h), orientation if orientation in range(1, 9) else 1


def stored_to_displayed(
    boxes: np.ndarray, stored_size: tuple[int, int], orientation: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Map xyxy boxes drawn on an image's stored pixels (`stored_size` = (width, height)) into the displayed image
    that `load_image` returns after applying EXIF `orientation` (1..8); returns the boxes and the displayed size.

    Coordinates are continuous (pixel `i` covers `[i, i + 1]`), so a mirror maps `x` to `W - x`. This is the
    transpose `ImageOps.exif_transpose` applies to the pixels: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate
    90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise. Other values are treated as 1 (no change).
    """
    w, h = stored_size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    corners = {  # orientation -> (new x1, new y1, new x2, new y2) before ordering, and the displayed size
        2: ((w - x2, y1, w - x1, y2), (w, h)),
        3: ((w - x2, h - y2, w - x1, h - y1), (w, h)),
        4: ((x1, h - y2, x2, h - y1), (w, h)),
        5: ((y1, x1, y2, x2), (h, w)),
        6: ((h - y2, x1, h - y1, x2), (h, w)),
        7: ((h - y2, w - x2, h - y1, w - x1), (h, w)),
        8: ((y1, w - x2, y2, w - x1), (h, w)),
    }
    if orientation not in corners:
        return b.copy(), (w, h)
    coords, size = corners[orientation]
    return np.stack(coords, axis=1), size


def _exif_orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)  # 0x0112 = Orientation
        return int(value)
    except Exception:  # noqa: BLE001 - a broken EXIF block means no rotation, as in `_apply_exif_orientation`
        return 1


def _check_file(path: Path) -> None:
    """Give missing, non-regular and empty files their own message: they are the most common user mistakes."""
    if not path.exists():
        raise ImageLoadError(f"{path}: image file not found; check the path and the image root")
    if not path.is_file():
        raise ImageLoadError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes); the copy or download probably failed, fetch it again")


_strict_lock = threading.Lock()
_strict_depth = 0
_strict_saved = False


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's globals as our decoding needs them, for the duration of one decode.

    - `Image.MAX_IMAGE_PIXELS` raised to what `max_pixels` allows: Pillow's own hard stop (2 x the default, about
      179 Mpx) would otherwise refuse a survey image the caller asked for; our `_check_size` still guards the limit.
    - `ImageFile.LOAD_TRUNCATED_IMAGES` off, so a truncated file raises. It is set by the first decode in flight and
      restored by the last (a counter under a lock), so decodes on several threads never see each other's restore.
    """
    global _strict_depth, _strict_saved
    with _strict_lock:
        if _strict_depth == 0:
            _strict_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_depth += 1
    saved = Image.MAX_IMAGE_PIXELS
    if saved is not None and max_pixels > saved:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved
        with _strict_lock:
            _strict_depth -= 1
            if _strict_depth == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _strict_saved


def _check_size(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse images whose header promises more pixels than `max_pixels`, before any pixel is decoded."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{path}: image header gives an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ImageLoadError(
            f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
            "(a possible decompression bomb); downscale the image or raise max_pixels"
        )


def _apply_exif_orientation(path: Path, img: Image.Image) -> Image.Image:
    """Rotate/flip per the EXIF orientation tag; a broken EXIF block only costs the rotation, not the image."""
    try:
        out = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - any EXIF parser failure is survivable
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", path, e)
        return img
    return img if out is None else out


def to_rgb8(img: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB (see the module docstring for the choices)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_bit_depth_to_rgb(img)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    if img.mode == "RGBA":
        return _composite_on_white(img)
    return img.convert("RGB")


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale to 0..255 rather than clipping (which whitens the image)."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        finite = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 255.0 / 65535.0
        scaled = finite * scale
    else:
        scaled = arr.astype(np.float64) / 257.0
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white (see module docstring for why white)."""
    background = Image.new("RGBA", img.size, _WHITE + (255,))
    return Image.alpha_composite(background, img).convert("RGB")


# -- a global budget on decoded pixels in flight ------------------------------------------------------------------
#: Peak bytes per pixel while a worker turns a file into a tensor, measured (benchmarks/decode_memory.py: 1.64 GiB for
#: a 144 Mpx PNG): Pillow's RGB buffer, the copy `to_rgb8` returns, the tensor and its copy into shared memory, 3 each.
DECODE_BYTES_PER_PIXEL: int = 12


def default_decode_budget(max_pixels: int) -> int:
    """The pixels that may be decoded at once by default: a quarter of the memory available now, at
    `DECODE_BYTES_PER_PIXEL`, but never less than `max_pixels` (the per-image cap), so that every image the cap
    allows can still be decoded, alone if need be. Where the OS does not say, `4 * max_pixels`."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * max_pixels
    return max(max_pixels, available // 4 // DECODE_BYTES_PER_PIXEL)


def loader_slots(workers: int, prefetch_factor: int | None) -> int:
    """How many consecutive batches of a `DataLoader` can hold decoded images at one moment.

    With workers, torch keeps `workers * prefetch_factor` batches dispatched (being decoded or decoded and queued);
    the main process holds the batch it works on, and, for the instant between receiving the next batch and
    dropping the previous one, that one too: two more. Without workers, batches are decoded one at a time in the
    main process while the previous one may still be held: two.
    """
    return (workers * (prefetch_factor or 2) if workers > 0 else 0) + 2


class PixelBudgetBatches:
    """A `DataLoader` batch sampler over image files that keeps the decoded pixels in flight under `budget`.

    Why a sampler: a cross-process semaphore cannot work here, because batches are consumed in order and a worker
    waiting for budget held by a later, already decoded batch would deadlock the loader. But the loader's
    in-flight set is always a run of at most `slots` consecutive batches (`loader_slots`), whatever the workers do.
    So the rule is: **any `slots` consecutive batches hold at most `budget` pixels**, counted from each file's header
    (cheap: no pixel is decoded). Batches close at `batch_size` images or when the next image would break the rule;
    when even one image would break it, empty batches go out first (they decode nothing and let the window move
    on), which serialises big images instead of refusing them. An image above the whole budget cannot fit and is
    left for the dataset to refuse (give it `max_pixels <= budget`); one whose header cannot be read counts 0, its
    error comes from decoding. Headers are read lazily as the loader asks for batches, so a run over 100,000 files
    does not start with 100,000 header reads.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *, batch_size: int, budget: int, slots: int) -> None:
        if batch_size < 1 or budget < 1 or slots < 1:
            raise ValueError(f"batch_size, budget and slots must be positive, got {batch_size}, {budget}, {slots}")
        self.paths = list(paths)
        self.batch_size = batch_size
        self.budget = budget
        self.slots = slots

    def pixels(self, index: int) -> int:
        """Pixels the image at `index` will decode to, from its header; 0 when it will not be decoded."""
        try:
            w, h = image_size(self.paths[index], apply_exif=False)
        except InputError:
            return 0
        return 0 if w * h > self.budget else w * h

    def __iter__(self) -> Iterator[list[int]]:
        recent: deque[int] = deque(maxlen=self.slots - 1)  # pixels of the batches that may still be in flight
        batch: list[int] = []
        held = 0
        for index in range(len(self.paths)):
            px = self.pixels(index)
            if batch and (len(batch) == self.batch_size or sum(recent) + held + px > self.budget):
                yield batch
                recent.append(held)
                batch, held = [], 0
            while recent and sum(recent) + px > self.budget:
                yield []  # an empty batch: nothing decoded while the big batches before it drain
                recent.append(0)
            batch.append(index)
            held += px
        if batch:
            yield batch
