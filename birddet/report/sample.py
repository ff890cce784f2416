"""Which images a report shows when a run has more than `--max-images`: a sample stratified by species and confidence.

As MegaDetector's `postprocess_batch_results` previews do, a big run is shown as a sample that keeps its mix: each
image falls in one stratum, (its top-scoring box's species, or category when unclassified; the confidence band of
that score), with images without boxes a stratum of their own, and the sample takes turns over the strata, so a rare
species or a band of doubtful scores is shown as well as the common, confident ones. Within a stratum the images are
drawn at random with a fixed seed, so a report of the same run shows the same images.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from birddet.report.inputs import ReportImage

DEFAULT_MAX_IMAGES = 2000  # as many previews as a browser scrolls through easily; about 150 MB of JPEGs
CONFIDENCE_BANDS = (0.2, 0.5, 0.8)  # band edges: [0, 0.2), [0.2, 0.5), [0.5, 0.8), [0.8, 1]


def stratum(image: ReportImage) -> tuple[str, int]:
    """(species or category of the top box, confidence band); ("", -1) for an image without boxes."""
    if not image.boxes:
        return ("", -1)
    top = max(image.boxes, key=lambda b: b.score)
    band = sum(top.score >= edge for edge in CONFIDENCE_BANDS)
    return (top.species or top.category, band)


def stratified_sample(images: Sequence[ReportImage], limit: int, *, seed: int = 0) -> list[ReportImage]:
    """At most `limit` images, taking turns over the strata; the input order is kept in the result."""
    if len(images) <= limit:
        return list(images)
    strata: dict[tuple[str, int], list[int]] = {}
    for i, image in enumerate(images):
        strata.setdefault(stratum(image), []).append(i)
    rng = random.Random(seed)
    queues = []
    for key in sorted(strata):
        members = strata[key]
        rng.shuffle(members)
        queues.append(members)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    return [images[i] for i in sorted(chosen)]
