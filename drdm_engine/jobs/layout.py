"""Where a run's files go, relative to its output folder, and each case's seed.

- :class:`ImageLayout`: one image (``drdm augment IMAGE``): flat files ``<name>_drdm_<k>…`` with a PNG
  preview per sample and ``manifest.json``; the case's seed is the run's ``--seed``.
- :class:`DatasetLayout`: a dataset (a folder, a list, an nnU-Net raw dataset, or one image with
  ``--pairs``), written in the input's layout with new case IDs ``<case>_drdmNNN`` (nnU-Net:
  ``imagesTr/<id>_0000<ending>``, ``labelsTr/<id><ending>``, fields in ``drdm_fields/``; else
  ``images/``, ``labels/``, ``fields/``) and ``drdm_manifest.json``; each case's seed is a hash of the
  run's seed and its ID, so its samples do not depend on the other cases. Resumable case by case.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DRDMError
from ..io.formats import IMAGE_SUFFIXES, nearest_existing, stem_of, suffix_of
from .cases import Case, Dataset

FIELD_SUFFIX = "_field.nrrd"
DATASET_JSON = "dataset.json"  # an nnU-Net output's own description
PAIRS = "pairs.json"  # the registration pairs' MONAI datalist
WRITE_SUFFIX = {".nhdr": ".nrrd", ".mhd": ".mha"}  # detached-header formats are written as one file
NAME_MAX_MARGIN = 24  # bytes an atomic write's temporary name adds to a file name (``.tmp<pid>_``)
SAMPLE_ID = re.compile(r"(?P<case>.+)_drdm(?P<index>\d{3,})")


@dataclass(frozen=True)
class SampleFiles:
    """Relative paths of one output case: its ID, one image per channel, labels, field, preview."""

    id: str
    images: list[str]
    labels: str | None
    field: str | None = None
    preview: str | None = None

    def paths(self) -> list[str]:
        return [p for p in (*self.images, self.labels, self.field, self.preview) if p]

    def entry(self) -> dict:
        """The manifest's file entries."""
        return {"id": self.id, "images": self.images, "labels": self.labels, "field": self.field,
                "preview": self.preview}


def case_seed(seed: int, case_id: str) -> int:
    """Seed of one case: a stable hash (SHA-256) of the run seed and the case ID, in ``[0, 2^63)``."""
    digest = hashlib.sha256(f"{int(seed)}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_id(case_id: str, index: int) -> str:
    """New case ID of sample ``index`` of ``case_id`` in a dataset."""
    return f"{case_id}_drdm{index:03d}"


class ImageLayout:
    """The layout of a single-image run (see the module)."""

    manifest = "manifest.json"
    resumable = False
    previews = True
    seeds = "the run's --seed"

    def __init__(self, case: Case):
        self.case = case
        self.stem = stem_of(case.channels[0])
        suffix = suffix_of(case.channels[0])
        self.suffix = ".nii.gz" if suffix in (".nii", ".nii.gz") else ".nrrd"
        self.seg_nrrd = case.labels is not None and suffix_of(case.labels) == ".seg.nrrd"

    def seed(self, seed: int, case_id: str) -> int:
        return seed

    def sample(self, case: Case, index: int) -> SampleFiles:
        base = f"{self.stem}_drdm_{index:03d}"
        labels = None
        if case.labels is not None:
            labels = f"{base}_labels.seg.nrrd" if self.seg_nrrd else f"{base}_labels{self.suffix}"
        return SampleFiles(base, [f"{base}{self.suffix}"], labels, f"{base}{FIELD_SUFFIX}", f"{base}_preview.png")

    def original(self, case: Case) -> SampleFiles | None:
        return None

    def pair_field(self, moving: str, fixed: str) -> str:
        raise NotImplementedError("a single-image run writes no pairs")

    def sample_index(self, name: str) -> int | None:
        """The sample index of a file name that a run on this image (and labels) writes, whatever its
        sample count; ``None`` for any other name."""
        base = f"{self.stem}_drdm_"
        tails = {p[len(base) + 3:] for p in self.sample(self.case, 0).paths()}
        index, tail = name[len(base):len(base) + 3], name[len(base) + 3:]
        return int(index) if name.startswith(base) and index.isdigit() and tail in tails else None

    def is_output(self, name: str, samples: int) -> bool:
        """Whether a top-level name in the output folder is one this run writes."""
        index = self.sample_index(name)
        return name == self.manifest or (index is not None and index < samples)

    def earlier_samples(self, out: Path, samples: int) -> list[str]:
        """Sample files in ``out`` that an earlier run on this image wrote beyond this run's ``samples``
        (``--overwrite`` replaces same-named files only; these stay, and the manifest does not list them)."""
        indices = {p.name: self.sample_index(p.name) for p in out.iterdir()}
        return sorted(name for name, index in indices.items() if index is not None and index >= samples)


class DatasetLayout:
    """The layout of a dataset run (see the module)."""

    manifest = "drdm_manifest.json"
    resumable = True
    previews = False
    seeds = "per case: SHA-256 of '<seed>:<case id>', first 8 bytes little-endian, shifted right by 1"
    top_level = (manifest, DATASET_JSON, PAIRS)  # the files a dataset run writes beside its folders

    def __init__(self, dataset: Dataset):
        self.nnunet = dataset.kind == "nnunet"
        self.ending = dataset.file_ending

    def seed(self, seed: int, case_id: str) -> int:
        return case_seed(seed, case_id)

    def _files(self, case: Case, new_id: str) -> tuple[list[str], str | None]:
        if self.nnunet:
            images = [f"imagesTr/{new_id}_{c:04d}{self.ending}" for c in range(len(case.channels))]
            return images, f"labelsTr/{new_id}{self.ending}" if case.labels else None
        images = [f"images/{new_id}{_written_suffix(case.channels[0])}"]
        return images, f"labels/{new_id}{_written_suffix(case.labels)}" if case.labels else None

    def sample(self, case: Case, index: int) -> SampleFiles:
        new_id = sample_id(case.id, index)
        images, labels = self._files(case, new_id)
        fields = "drdm_fields" if self.nnunet else "fields"
        return SampleFiles(new_id, images, labels, f"{fields}/{new_id}{FIELD_SUFFIX}")

    def original(self, case: Case) -> SampleFiles:
        """Where a copy of the case's own files goes, under its own ID."""
        images, labels = self._files(case, case.id)
        return SampleFiles(case.id, images, labels)

    def pair_field(self, moving: str, fixed: str) -> str:
        return f"pair_fields/{fixed}_from_{moving}{FIELD_SUFFIX}"

    def is_output(self, name: str, samples: int) -> bool:
        return name in self.top_level


Layout = ImageLayout | DatasetLayout


def _written_suffix(path: str) -> str:
    """The suffix a case's file is written with: its own, one-file NRRD/MHA for detached headers, NRRD for a
    DICOM series."""
    suffix = suffix_of(path)
    return WRITE_SUFFIX.get(suffix, suffix) if suffix in IMAGE_SUFFIXES + (".seg.nrrd",) else ".nrrd"


def _refuse_same(first: str, second: str, what: str) -> None:
    raise DRDMError(f"cases {first} and {second} would both write {what}; rename one of them "
                    f"(output case IDs are <case>_drdmNNN)")


def check_names(dataset: Dataset, layout: Layout, out: Path, samples: int, originals: bool, pairs: bool) -> None:
    """Refuse, before any work, two cases writing the same file (compared case-insensitively, as some
    file systems do) and file names the output's file system cannot hold; costs one pass over the cases,
    whatever the number of samples.

    A sample's ID ``<case>_drdm<k>`` names its case (the text before the last ``_drdm``), so samples of two
    cases never share a name; what can collide is a case ID that differs from another only in letter
    case, a copied original whose ID is another case's sample ID, and registration pair fields."""
    by_folded: dict[str, str] = {}
    for case in dataset.cases:
        folded = case.id.casefold()
        if folded in by_folded:
            _refuse_same(by_folded[folded], case.id, "files whose names differ only in letter case")
        by_folded[folded] = case.id
    if originals:
        for case in dataset.cases:
            match = SAMPLE_ID.fullmatch(case.id.casefold())
            owner = by_folded.get(match["case"]) if match else None
            index = int(match["index"]) if match else samples
            if owner is not None and index < samples and sample_id(match["case"], index) == case.id.casefold():
                _refuse_same(owner, case.id, f"the files of output case {sample_id(owner, index)}")
    if pairs:
        seen: dict[str, str] = {}
        for case in dataset.cases:
            for k in range(samples - 1):
                name = layout.pair_field(sample_id(case.id, k), sample_id(case.id, k + 1)).casefold()
                if seen.setdefault(name, case.id) != case.id:
                    _refuse_same(seen[name], case.id, name)
    _check_name_lengths(dataset, layout, out, samples, originals, pairs)


def _check_name_lengths(dataset: Dataset, layout: Layout, out: Path, samples: int, originals: bool,
                        pairs: bool) -> None:
    """Refuse output file names longer than the output's file system holds (the last sample's are the
    longest of a case: its index has the most digits)."""
    limit = _name_max(out) - NAME_MAX_MARGIN
    for case in dataset.cases:
        names = layout.sample(case, samples - 1).paths()
        if originals:
            names += layout.original(case).paths()
        if pairs and samples > 1:
            names.append(layout.pair_field(sample_id(case.id, samples - 2), sample_id(case.id, samples - 1)))
        longest = max((Path(n).name for n in names), key=lambda n: len(os.fsencode(n)))
        if len(os.fsencode(longest)) > limit:
            raise DRDMError(f"case {case.id}: output file name {longest[:60]}… is too long for the file system of "
                            f"{out}; shorten the case ID")


def _name_max(out: Path) -> int:
    """Longest file name (bytes) the file system that will hold ``out`` accepts (255 where unknown)."""
    try:
        return os.pathconf(nearest_existing(out), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255
