"""Finding the cases of a dataset: a folder of images (labels paired by name), a list file, or an
nnU-Net raw dataset (``imagesTr/`` with ``_0000``… channel files, ``labelsTr/``, ``dataset.json``)."""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import DRDMError
from ..io.formats import IMAGE_SUFFIXES, stem_of, suffix_of

LIST_SUFFIXES = (".txt", ".csv")
DEFAULT_LABEL_PATTERNS = ("{case}.seg.nrrd",) + tuple("{case}" + s for s in IMAGE_SUFFIXES)
JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "true or false", type(None): "null"}


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
    return any(p.is_file() and suffix_of(p) in IMAGE_SUFFIXES for p in _entries(path))


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; refuses a folder that cannot be listed with one line."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DRDMError(f"cannot read folder {folder}: {exc.strerror or exc}") from exc


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
            if Path(file).is_dir():
                raise DRDMError(f"case {case.id}: {file} is a folder; name an image file")
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
    images = [p for p in _entries(folder) if p.is_file() and suffix_of(p) in IMAGE_SUFFIXES]
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
    ``.csv``: a header with ``image`` and optionally ``labels`` and ``case`` (a missing cell is empty).
    UTF-8, with or without a byte-order mark. Relative paths are taken from the list file's folder."""
    text = _list_text(path)
    return _csv_cases(path, text) if path.suffix.lower() == ".csv" else _text_cases(path, text)


def _list_text(path: Path) -> str:
    """The text of a list file (UTF-8; a byte-order mark, as Excel's "CSV UTF-8" writes, is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DRDMError(f"list {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                        f"(in Excel: \"CSV UTF-8\")") from exc
    except OSError as exc:
        raise DRDMError(f"cannot read list {path}: {exc.strerror or exc}") from exc


def _list_entry(path: Path, line: int, name: str) -> str:
    """The file a list names on ``line``, relative to the list's folder; refuses a list naming a list."""
    entry = Path(name.strip())
    entry = entry if entry.is_absolute() else path.parent / entry
    if entry.suffix.lower() in LIST_SUFFIXES:
        raise DRDMError(f"list {path}, line {line}: {name.strip()} is a list file; a list names image files")
    return str(entry)


def _list_case(path: Path, line: int, image: str, labels: str, case_id: str = "") -> Case:
    """The case of one list line: its image, labels (may be empty) and ID (default: the image's stem)."""
    if not image.strip():
        raise DRDMError(f"list {path}, line {line}: the image is missing; give an image file on every line")
    image = _list_entry(path, line, image)
    labels_file = _list_entry(path, line, labels) if labels.strip() else None
    return Case(case_id.strip() or stem_of(image), (image,), labels_file)


def _csv_cases(path: Path, text: str) -> list[Case]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise DRDMError(f"list {path}, line {reader.line_num}: not valid CSV ({exc})") from exc
    header = [cell.strip() for cell in rows[0]] if rows else []
    if rows and "image" not in header:
        raise DRDMError(f"list {path} needs a header row with an 'image' column (and optionally 'labels', 'case')")
    cases = []
    for line, row in enumerate(rows[1:], start=2):
        cells = dict(zip(header, row))
        if any(cell.strip() for cell in row):
            cases.append(_list_case(path, line, cells.get("image", ""), cells.get("labels", ""),
                                    cells.get("case", "")))
    return cases


def _text_cases(path: Path, text: str) -> list[Case]:
    cases = []
    for line, content in enumerate(text.splitlines(), start=1):
        fields_ = [f for f in re.split(r"[\s,]+", content.split("#", 1)[0].strip()) if f]
        if not fields_:
            continue
        if len(fields_) > 2:
            raise DRDMError(f"list {path}: line {content!r} has more than 'image labels'")
        cases.append(_list_case(path, line, fields_[0], fields_[1] if len(fields_) == 2 else ""))
    return cases


def _dataset_json(root: Path) -> dict:
    """The object in an nnU-Net ``dataset.json``; refuses an unreadable file or other JSON with one line."""
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DRDMError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DRDMError(f"cannot read {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except RecursionError as exc:
        raise DRDMError(f"cannot read {path}: its JSON is nested too deeply for a dataset.json") from exc
    except ValueError as exc:
        raise DRDMError(f"cannot read {path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DRDMError(f"{path} holds {JSON_KINDS[type(meta)]}, not a JSON object; an nnU-Net v2 dataset.json "
                        f"is an object with 'channel_names' and 'file_ending'")
    return meta


def _read_nnunet(root: Path) -> Dataset:
    meta = _dataset_json(root)
    ending = meta.get("file_ending")
    channels = meta.get("channel_names") or meta.get("modality")
    if not ending or not channels:
        raise DRDMError(f"{root / 'dataset.json'} needs 'file_ending' and 'channel_names' (nnU-Net v2 raw dataset)")
    if not isinstance(ending, str):
        raise DRDMError(f"{root / 'dataset.json'}: file_ending is {JSON_KINDS[type(ending)]}, not text; "
                        f"give the image suffix, e.g. \".nii.gz\"")
    if not isinstance(channels, (dict, list)):
        raise DRDMError(f"{root / 'dataset.json'}: channel_names is {JSON_KINDS[type(channels)]}; give an object "
                        f"naming each channel, e.g. {{\"0\": \"CT\"}}")
    if "dataset" in meta:
        raise DRDMError(f"{root / 'dataset.json'} lists its files explicitly ('dataset' key); only the imagesTr/ "
                        f"naming scheme is supported")
    count = len(channels)
    regex = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + r"\Z")
    found: dict[str, dict[int, str]] = {}
    for image in _entries(root / "imagesTr"):
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


def single_case(image: str, labels: str | None) -> Dataset:
    """One image (and labels) as a dataset of one case, named after the image file (or DICOM folder)."""
    return Dataset(str(Path(image).parent), "files", (Case(stem_of(image), (str(image),), labels),))
