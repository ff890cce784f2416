"""Taxonomy of a species classifier: ranks parsed from class names, filters, and probability roll-up.

The iNat21 classifier names its classes with the full lineage
(``03838_Animalia_Chordata_Aves_Passeriformes_Fringillidae_Spinus_tristis``). Treating those as opaque labels
would throw away what lets the pipeline say "a finch, species unsure" instead of a confident wrong species, so
each name is parsed into ranks (kingdom ... species). Names from other models (``"songbird"``) carry no
lineage; they become species-only taxa that never group with anything above species.

Roll-up is vectorised: group ids per rank are computed once, and per-rank probability sums are built
bottom-up (species -> genus -> family ...) with ``index_add_``, so a batch of 64 crops over 10,000 classes
costs a few small tensor ops rather than a Python loop over classes (about 1 ms on an idle 2-core CPU; when
the cores are busy with other processes, PyTorch's OpenMP threads spin and one intra-op thread is faster).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from birddet.errors import InputError

RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

# Ranks above species, deepest first: the order in which roll-up tries them.
_HIGHER_RANKS_DEEPEST_FIRST: tuple[str, ...] = tuple(reversed(RANKS[:-1]))

# Kingdom names accepted without the numeric prefix, so "Animalia_Chordata_..." also parses.
_KINGDOMS = frozenset({"animalia", "plantae", "fungi", "bacteria", "archaea", "chromista", "protozoa", "viruses"})

UNKNOWN = "unknown"


def parse_class_name(name: str) -> dict[str, str]:
    """Split an iNat21-style class name into ranks; opaque names become ``{"species": name}``.

    Accepted shape: ``[NNNNN_]Kingdom_Phylum_Class_Order_Family_Genus_epithet[_more]``. Everything after the
    genus is the epithet (joined with spaces, so an infraspecific part stays in the species name). The
    numeric prefix or a known kingdom name is required, so that an opaque name that merely has many
    underscores (``"red_tailed_hawk_..."``) is not misread as a lineage.
    """
    parts = name.split("_")
    has_prefix = len(parts) > 0 and parts[0].isdigit()
    lineage = parts[1:] if has_prefix else parts
    looks_taxonomic = has_prefix or (len(lineage) > 0 and lineage[0].lower() in _KINGDOMS)
    if not looks_taxonomic or len(lineage) < 7 or any(not p for p in lineage):
        return {"species": name}
    ranks = dict(zip(RANKS[:-1], lineage[:6], strict=True))
    ranks["species"] = f"{lineage[5]} {' '.join(lineage[6:])}"
    return ranks


@dataclass(frozen=True)
class Taxon:
    """One classifier class with its lineage.

    ``ranks`` maps rank -> name for the ranks known (always ``species``; opaque class names have only that).
    The species value is the binomial ``"Genus epithet"`` for parsed names, the class name otherwise.
    """

    index: int
    class_name: str
    ranks: dict[str, str]
    common_name: str | None = None

    @property
    def scientific_name(self) -> str:
        """The species-rank name (binomial for iNat21 classes, the raw class name for opaque ones)."""
        return self.ranks["species"]

    @property
    def is_opaque(self) -> bool:
        """True when the class name carried no lineage, so no higher rank can group it."""
        return len(self.ranks) == 1

    def label(self, use_common_names: bool = True) -> str:
        """Short human label: the common name when asked for and known, else the scientific name."""
        if use_common_names and self.common_name:
            return self.common_name
        return self.scientific_name

    def path(self, rank: str) -> tuple[str, ...]:
        """Lineage from kingdom down to ``rank``, as a grouping key.

        Keys include every ancestor so homonyms in different lineages (a plant and an animal genus of the
        same name) stay separate. Returns ``()`` when this taxon does not know ``rank`` (opaque classes above
        species), meaning "not part of any group at this rank".
        """
        if rank not in RANKS:
            raise ValueError(f"unknown rank {rank!r}; expected one of {', '.join(RANKS)}")
        if rank not in self.ranks:
            return ()
        return tuple(self.ranks[r] for r in RANKS[: RANKS.index(rank) + 1] if r in self.ranks)


@dataclass
class Rollup:
    """The deepest taxon the classifier is confident about for one crop.

    ``score`` is the summed probability of all classes inside the taxon. ``class_index`` is set only when
    ``rank == "species"`` so writers can look up the common name. ``rank == name == "unknown"`` marks a
    taxonomy with no rank above species in which no species reached the threshold.
    """

    rank: str
    name: str
    score: float
    class_index: int | None = None

    @property
    def names_no_taxon(self) -> bool:
        """True for the ``unknown`` result: no species reached the threshold and there was no rank to roll up to.

        A classifier trained on one's own crops (opaque class names) always lands here below the threshold; the
        writers and the drawn label then fall back to the detector's category with the top species as a guess.
        """
        return self.rank == UNKNOWN

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form, for checkpoints of prediction runs."""
        return {"rank": self.rank, "name": self.name, "score": self.score, "class_index": self.class_index}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Rollup:
        """Inverse of :meth:`to_dict`."""
        idx = data.get("class_index")
        return cls(
            rank=str(data["rank"]),
            name=str(data["name"]),
            score=float(data["score"]),  # type: ignore[arg-type]
            class_index=None if idx is None else int(idx),  # type: ignore[call-overload]
        )


def load_common_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read birder's common-name file ``{"<class index>": "<common name>"}`` into ``{index: name}``.

    The file is partial by design (9,871 of the 10,000 iNat21 classes have a name), so missing indices are
    fine; anything that is not a string-int key with a non-empty string value is rejected, naming the file.
    """
    p = Path(path)
    hint = 'expected a JSON object {"<class index>": "<common name>", ...} as published by birder'
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"common names file not found: {p}; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read common names file {p}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"common names file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); {hint}"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"common names file {p} holds a {type(data).__name__}, not an object; {hint}")
    names: dict[int, str] = {}
    for key, value in data.items():
        try:
            index = int(key)
        except ValueError:
            raise InputError(f"common names file {p}: key {key!r} is not a class index; {hint}") from None
        if index < 0:
            raise InputError(f"common names file {p}: key {key!r} is a negative class index; {hint}")
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"common names file {p}: value for key {key!r} is {value!r}, not a non-empty string")
        names[index] = value.strip()
    return names


@dataclass
class _RankGroups:
    """Group structure of one rank: which group each child (class or lower group) falls in.

    ``parent`` maps each group of the rank below (or each class, for genus) to a group id here; the extra id
    ``len(names)`` is the "no group" bucket for children that do not know this rank.
    """

    rank: str
    names: list[str]
    parent: torch.Tensor  # long [n_children]
    class_ids: list[list[int]] = field(default_factory=list)


class Taxonomy:
    """Taxa of a classifier, built from birder's ``class_to_idx`` plus optional common names.

    Class indices must be ``0..C-1`` (one per output logit), which is what birder writes; probability
    tensors passed to :meth:`restrict` and :meth:`rollup` have ``C`` in their last dimension.
    """

    def __init__(
        self,
        class_to_idx: Mapping[str, int],
        common_names: Mapping[int, str] | str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(common_names, str | os.PathLike):
            common_names = load_common_names(common_names)
        common_names = dict(common_names or {})
        by_index: dict[int, str] = {}
        for name, idx in class_to_idx.items():
            if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                raise InputError(f"class_to_idx: class {name!r} has index {idx!r}; indices must be ints >= 0")
            if idx in by_index:
                raise InputError(f"class_to_idx: classes {by_index[idx]!r} and {name!r} share index {idx}")
            by_index[idx] = name
        n = len(by_index)
        if n == 0:
            raise InputError("class_to_idx is empty; the classifier file has no classes")
        if max(by_index) != n - 1:
            missing = sorted(set(range(max(by_index) + 1)) - set(by_index))[:5]
            raise InputError(f"class_to_idx: indices must be 0..{n - 1} without gaps; missing e.g. {missing}")
        extra = sorted(i for i in common_names if i >= n)
        if extra:
            raise InputError(
                f"common names refer to class indices {extra[:5]} but the classifier has {n} classes; "
                "use the common names file published with this classifier"
            )
        self._taxa: list[Taxon] = [
            Taxon(i, by_index[i], parse_class_name(by_index[i]), common_names.get(i)) for i in range(n)
        ]
        self._build_name_index()
        self._build_groups()

    # -- construction helpers -------------------------------------------------------------------------

    def _build_name_index(self) -> None:
        """Case-folded name -> class indices, for filters (any rank) and species lists (species only)."""
        self._any_rank: dict[str, set[int]] = {}
        self._species: dict[str, set[int]] = {}
        self._display: dict[str, str] = {}

        def add(table: dict[str, set[int]], key: str, idx: int) -> None:
            folded = key.casefold()
            table.setdefault(folded, set()).add(idx)
            self._display.setdefault(folded, key)

        for t in self._taxa:
            for value in t.ranks.values():
                add(self._any_rank, value, t.index)
            for key in (t.scientific_name, t.class_name, t.common_name):
                if key:
                    add(self._species, key, t.index)
                    add(self._any_rank, key, t.index)

    def _build_groups(self) -> None:
        """Precompute, per rank above species, the child -> group map used by the vectorised roll-up."""
        self._groups: list[_RankGroups] = []
        # Keys of the children at the current level: species paths first, then each rank's group paths.
        child_paths: list[tuple[str, ...]] = [t.path("species") if not t.is_opaque else () for t in self._taxa]
        child_classes: list[list[int]] = [[t.index] for t in self._taxa]
        for rank in _HIGHER_RANKS_DEEPEST_FIRST:
            depth = RANKS.index(rank) + 1
            ids: dict[tuple[str, ...], int] = {}
            names: list[str] = []
            members: list[list[int]] = []
            parent: list[int] = []
            for path, classes in zip(child_paths, child_classes, strict=True):
                key = path[:depth] if len(path) > depth else ()
                if not key:
                    parent.append(-1)
                    continue
                if key not in ids:
                    ids[key] = len(names)
                    names.append(key[-1])
                    members.append([])
                parent.append(ids[key])
                members[ids[key]].extend(classes)
            none_bucket = len(names)
            parent_t = torch.tensor([none_bucket if p < 0 else p for p in parent], dtype=torch.long)
            self._groups.append(_RankGroups(rank, names, parent_t, members))
            child_paths = sorted(ids, key=ids.__getitem__)
            child_classes = members

    # -- lookups --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._taxa)

    def taxon(self, index: int) -> Taxon:
        """The taxon of class ``index``; IndexError names the valid range."""
        if not 0 <= index < len(self._taxa):
            raise IndexError(f"class index {index} out of range 0..{len(self._taxa) - 1}")
        return self._taxa[index]

    def __iter__(self) -> Iterator[Taxon]:
        """Taxa in class-index order."""
        return iter(self._taxa)

    def description(self, index: int) -> str:
        """Searchable text for MegaDetector's ``classification_category_descriptions``.

        ``"American Goldfinch (Spinus tristis); Animalia > Chordata > Aves > Passeriformes > Fringillidae >
        Spinus"``; the lineage part is dropped for opaque classes, the common name when unknown.
        """
        t = self.taxon(index)
        head = f"{t.common_name} ({t.scientific_name})" if t.common_name else t.scientific_name
        lineage = [t.ranks[r] for r in RANKS[:-1] if r in t.ranks]
        return f"{head}; {' > '.join(lineage)}" if lineage else head

    def _suggest(self, name: str, table: Mapping[str, set[int]]) -> str:
        close = difflib.get_close_matches(name.casefold(), list(table), n=5, cutoff=0.6)
        if not close:
            return ""
        return "; did you mean " + ", ".join(repr(self._display[c]) for c in close) + "?"

    def indices_in_taxon(self, name: str) -> list[int]:
        """Class indices inside the taxon called ``name`` at any rank (case-insensitive), sorted.

        ``"Aves"``, ``"passeriformes"``, ``"Spinus tristis"``, a full class name or a common name all work.
        A name used at several places (homonym genera) selects the union, which is what a filter wants.
        """
        found = self._any_rank.get(name.strip().casefold())
        if not found:
            raise InputError(
                f"taxon {name!r} is not in the classifier's taxonomy{self._suggest(name.strip(), self._any_rank)}"
                " (names are matched at any rank, e.g. 'Aves', 'Passeriformes', 'Spinus tristis')"
            )
        return sorted(found)

    def indices_for_species_list(self, source: str | os.PathLike[str] | Sequence[str]) -> list[int]:
        """Class indices of a species list: a text file (one species a line) or a sequence of names.

        Each line is a scientific name, a full class name or a common name (case-insensitive); blank lines and
        lines starting with ``#`` are skipped. Every unmatched line is reported at once with its line number,
        so a user fixes the list in one pass. A ``str`` is taken as a file path, not as a single name.
        """
        if isinstance(source, str | os.PathLike):
            where = str(source)
            try:
                lines = Path(source).read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                raise InputError(f"species list not found: {where}; check the path") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"cannot read species list {where}: {exc}") from None
        else:
            where = "species list"
            lines = list(source)
        found: set[int] = set()
        unmatched: list[str] = []
        for lineno, raw in enumerate(lines, start=1):
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            hit = self._species.get(entry.casefold())
            if hit:
                found |= hit
            else:
                unmatched.append(f"line {lineno}: {entry!r}{self._suggest(entry, self._species)}")
        if unmatched:
            shown = "; ".join(unmatched[:10]) + (f"; and {len(unmatched) - 10} more" if len(unmatched) > 10 else "")
            raise InputError(
                f"{where}: {len(unmatched)} entr{'y' if len(unmatched) == 1 else 'ies'} match no class ({shown}); "
                "use scientific names ('Spinus tristis'), class names or common names"
            )
        if not found:
            raise InputError(f"{where} lists no species; add one name per line")
        return sorted(found)

    # -- probability operations -----------------------------------------------------------------------

    def restrict(self, probs: torch.Tensor, allowed: Sequence[int]) -> torch.Tensor:
        """Keep only ``allowed`` classes and renormalise each row to sum to 1.

        ``probs`` is ``[C]`` or ``[B, C]``. A row that puts no mass on any allowed class has no information
        about them, so it becomes uniform over the allowed classes rather than NaN or all zeros (which would
        break roll-up and top-k); its top score is then ``1 / len(allowed)``, visibly unsure.
        """
        if probs.shape[-1] != len(self._taxa):
            raise ValueError(f"probs has {probs.shape[-1]} classes, taxonomy has {len(self._taxa)}")
        allowed_t = torch.as_tensor(list(allowed), dtype=torch.long, device=probs.device)
        if allowed_t.numel() == 0:
            raise InputError("the species filter allows no class; give at least one taxon or species")
        if int(allowed_t.min()) < 0 or int(allowed_t.max()) >= len(self._taxa):
            raise InputError(f"allowed class indices must be in 0..{len(self._taxa) - 1}")
        mask = torch.zeros(len(self._taxa), dtype=probs.dtype, device=probs.device)
        mask[allowed_t] = 1
        kept = probs * mask
        total = kept.sum(dim=-1, keepdim=True)
        uniform = mask / mask.sum()
        return torch.where(total > 0, kept / total.clamp_min(torch.finfo(probs.dtype).tiny), uniform)

    def rollup(self, probs: torch.Tensor, threshold: float) -> list[Rollup]:
        """The deepest confident taxon for each row of ``probs`` (``[C]`` -> one item, ``[B, C]`` -> B items).

        Rule: if the top species reaches ``threshold`` report it; otherwise sum probabilities within each
        genus, then family, order, class, phylum, kingdom, and report the deepest rank whose best group
        reaches the threshold (ties at a rank: the highest sum, lowest group id). If nothing reaches it, the
        best kingdom is reported with its (sub-threshold) sum; in a taxonomy with no ranks above species the
        result is ``Rollup("unknown", "unknown", top species probability)``.
        """
        if probs.shape[-1] != len(self._taxa):
            raise ValueError(f"probs has {probs.shape[-1]} classes, taxonomy has {len(self._taxa)}")
        rows = probs.detach().reshape(-1, len(self._taxa)).float().cpu()
        top_score, top_idx = rows.max(dim=1)
        best_scores = [top_score]
        best_ids = [top_idx]
        sums = rows
        for groups in self._groups:
            n_groups = len(groups.names)
            # One extra column collects children without this rank; it is sliced off, never reported.
            sums = torch.zeros(rows.shape[0], n_groups + 1).index_add_(1, groups.parent, sums)[:, :n_groups]
            if n_groups == 0:
                best_scores.append(torch.full_like(top_score, -1.0))
                best_ids.append(torch.full_like(top_idx, -1))
            else:
                s, i = sums.max(dim=1)
                best_scores.append(s)
                best_ids.append(i)
        scores = torch.stack(best_scores, dim=1)  # [B, 1 + ranks]: species, genus, ..., kingdom
        passes = scores >= threshold
        # First passing column = deepest confident rank (argmax over 0/1 returns the first 1).
        first = torch.where(passes.any(dim=1), passes.to(torch.uint8).argmax(dim=1), -1).tolist()
        scores_l = scores.clamp(max=1.0).tolist()  # float sums can exceed 1 by rounding
        ids_l = torch.stack(best_ids, dim=1).tolist()
        top_l = top_score.tolist()
        order = ("species", *_HIGHER_RANKS_DEEPEST_FIRST)
        out: list[Rollup] = []
        for row, col in enumerate(first):
            if col < 0:
                col = len(order) - 1  # kingdom, reported with its sub-threshold sum
                if ids_l[row][col] < 0:
                    out.append(Rollup(UNKNOWN, UNKNOWN, top_l[row]))
                    continue
            gid = ids_l[row][col]
            score = scores_l[row][col]
            if col == 0:
                out.append(Rollup("species", self._taxa[gid].scientific_name, score, gid))
            else:
                out.append(Rollup(order[col], self._groups[col - 1].names[gid], score))
        return out
