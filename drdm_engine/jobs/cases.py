"""Finding the cases of a dataset: a folder of images (labels paired by name), a list file, or an
nnU-Net raw dataset (``imagesTr/`` with ``_0000``… channel files, ``labelsTr/``, ``dataset.json``)."""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import DRDMError
from ..io.formats import IMAGE_SUFFIXES, stem_of, suffix_of

LIST_SUFFIXES = (".txt", ".csv")
DEFAULT_LABEL_PATTERNS = ("{case}.seg.nrrd",) + tuple("{case}" + s for s in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Case:
    """One case: its ID, its channel files (several modalities on one grid) and its label file."""

    id: str
    channels: tuple[str, ...]
    labels: str | None = None


@dataclass(frozen=True)
class Dataset:
    """The cases of a dataset and how its files are laid out.

    ``kind``: ``"nnunet"`` (``file_ending`` and ``dataset_json`` set) or ``"files"`` (one image per case)."""

    root: str
    kind: str
    cases: tuple[Case, ...]
    file_ending: str | None = None
    dataset_json: dict = field(default_factory=dict)


def is_dataset(path: str | Path) -> bool:
    """True for a list file (``.txt``/``.csv``), an nnU-Net raw dataset folder, or a folder that holds
    NIfTI/NRRD/MHA images (a folder of DICOM files is one image, not a dataset)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in LIST_SUFFIXES
    if not path.is_dir():
        return False
    if _is_nnunet(path):
        return True
    return any(p.is_file() and suffix_of(p) in IMAGE_SUFFIXES for p in path.iterdir())


def _is_nnunet(path: Path) -> bool:
    return (path / "dataset.json").is_file() and (path / "imagesTr").is_dir()


def find_cases(path: str | Path, labels_dir: str | None = None, labels_pattern: str | None = None) -> Dataset:
    """The dataset at ``path`` (see :func:`is_dataset`). ``labels_dir``/``labels_pattern`` pair label
    files with a folder's images: the pattern names a case's label file with ``{case}`` for its ID
    (default: the same name as the image, any image suffix) and is looked up in ``labels_dir``
    (default: the image folder, whose files matching the pattern are then labels, not cases)."""
    path = Path(path)
    if path.is_file():
        if labels_dir or labels_pattern:
            raise DRDMError("--labels-dir/--labels-pattern apply to a folder of images; a list file names its labels")
        return _check(Dataset(str(path), "files", _read_list(path)))
    if _is_nnunet(path):
        if labels_dir or labels_pattern:
            raise DRDMError("--labels-dir/--labels-pattern do not apply to an nnU-Net dataset (labels come from labelsTr/)")
        return _check(_read_nnunet(path))
    return _check(Dataset(str(path), "files", _read_folder(path, labels_dir, labels_pattern)))


def _check(dataset: Dataset) -> Dataset:
    if not dataset.cases:
        raise DRDMError(f"no cases found in {dataset.root}; give a folder of NIfTI/NRRD/MHA images, a .txt/.csv "
                        f"list, or an nnU-Net raw dataset folder")
    ids = [c.id for c in dataset.cases]
    bad = [i for i in ids if not i or "/" in i or "\\" in i or i.startswith(".")]
    if bad:
        raise DRDMError(f"case ID {bad[0]!r} in {dataset.root} cannot name files (empty, a path, or starting "
                        f"with '.'); rename it")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DRDMError(f"case IDs are not unique in {dataset.root}: {', '.join(duplicates[:5])}; rename the files")
    for case in dataset.cases:
        for file in case.channels + ((case.labels,) if case.labels else ()):
            if not Path(file).is_file():
                raise DRDMError(f"case {case.id}: file not found: {file}")
    return Dataset(dataset.root, dataset.kind, tuple(sorted(dataset.cases, key=lambda c: c.id)),
                   dataset.file_ending, dataset.dataset_json)


def _pattern_regex(pattern: str) -> re.Pattern:
    if pattern.count("{case}") != 1:
        raise DRDMError(f"--labels-pattern {pattern!r} must hold {{case}} once, e.g. '{{case}}_seg.nii.gz'")
    head, tail = pattern.split("{case}")
    return re.compile(re.escape(head) + "(?P<case>.+)" + re.escape(tail) + r"\Z")


def _read_folder(folder: Path, labels_dir: str | None, labels_pattern: str | None) -> list[Case]:
    label_folder = Path(labels_dir) if labels_dir else folder
    if labels_dir and not label_folder.is_dir():
        raise DRDMError(f"--labels-dir {labels_dir} is not a folder")
    patterns = (labels_pattern,) if labels_pattern else DEFAULT_LABEL_PATTERNS
    regexes = [_pattern_regex(p) for p in patterns]
    same_folder = label_folder.resolve() == folder.resolve()
    images = sorted(p for p in folder.iterdir() if p.is_file() and suffix_of(p) in IMAGE_SUFFIXES)
    if same_folder and labels_pattern:
        images = [p for p in images if not regexes[0].match(p.name)]
    cases = []
    for image in images:
        case_id = stem_of(image)
        labels = None
        if labels_dir or labels_pattern:
            found = [label_folder / p.replace("{case}", case_id) for p in patterns]
            found = [p for p in found if p.is_file() and p.resolve() != image.resolve()]
            if not found:
                raise DRDMError(f"case {case_id}: no label file {' or '.join(patterns)} in {label_folder}; "
                                f"check --labels-dir/--labels-pattern")
            labels = str(found[0])
        cases.append(Case(case_id, (str(image),), labels))
    return cases


def _read_list(path: Path) -> list[Case]:
    """``.txt``: one case a line, ``image [labels]`` (space, tab or comma separated, ``#`` comments);
    ``.csv``: a header with ``image`` and optionally ``labels`` and ``case``. Relative paths are taken
    from the list file's folder."""
    base = path.parent

    def resolve(name: str) -> str:
        return str((base / name.strip()) if not Path(name.strip()).is_absolute() else Path(name.strip()))

    cases = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and "image" not in rows[0]:
            raise DRDMError(f"list {path} needs a header row with an 'image' column (and optionally 'labels', 'case')")
        for row in rows:
            image = resolve(row["image"])
            labels = resolve(row["labels"]) if row.get("labels", "").strip() else None
            cases.append(Case(row.get("case", "").strip() or stem_of(image), (image,), labels))
        return cases
    for line in path.read_text().splitlines():
        fields_ = [f for f in re.split(r"[\s,]+", line.split("#", 1)[0].strip()) if f]
        if not fields_:
            continue
        if len(fields_) > 2:
            raise DRDMError(f"list {path}: line {line!r} has more than 'image labels'")
        image = resolve(fields_[0])
        cases.append(Case(stem_of(image), (image,), resolve(fields_[1]) if len(fields_) == 2 else None))
    return cases


def _read_nnunet(root: Path) -> Dataset:
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise DRDMError(f"cannot read {root / 'dataset.json'}: {exc}") from exc
    ending = meta.get("file_ending")
    channels = meta.get("channel_names") or meta.get("modality")
    if not ending or not channels:
        raise DRDMError(f"{root / 'dataset.json'} needs 'file_ending' and 'channel_names' (nnU-Net v2 raw dataset)")
    if "dataset" in meta:
        raise DRDMError(f"{root / 'dataset.json'} lists its files explicitly ('dataset' key); only the imagesTr/ "
                        f"naming scheme is supported")
    count = len(channels)
    regex = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + r"\Z")
    found: dict[str, dict[int, str]] = {}
    for image in sorted((root / "imagesTr").iterdir()):
        match = regex.match(image.name)
        if match:
            found.setdefault(match["case"], {})[int(match["channel"])] = str(image)
    cases = []
    for case_id, files in found.items():
        if sorted(files) != list(range(count)):
            raise DRDMError(f"nnU-Net case {case_id} has channels {sorted(files)}, dataset.json names {count}; "
                            f"every case needs _0000…_{count - 1:04d}{ending}")
        labels = root / "labelsTr" / f"{case_id}{ending}"
        if not labels.is_file():
            raise DRDMError(f"nnU-Net case {case_id} has no label file {labels}")
        cases.append(Case(case_id, tuple(files[c] for c in range(count)), str(labels)))
    return Dataset(str(root), "nnunet", tuple(cases), ending, meta)
