"""Finding images on disk: ImageFolder trees, flat folders with a labels file, calibration sets.

- ImageFolder (``DIR/<class>/<image>``, what every classification dataset uses): class folders in
  sorted order are classes 0..N-1, as torchvision's ``ImageFolder`` numbers them.
- A flat folder with ``labels.txt`` or ``labels.csv``: one ``<file> <label>`` (or ``<file>,<label>``)
  per line, the label a class index.
- Calibration needs no labels: every image (or ``.npy`` array) below the directory, recursively.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from ..core.errors import InputError
from ..core.io import read_user_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
LABEL_FILES = ("labels.txt", "labels.csv")


def _is_image(path: Path, arrays: bool = False) -> bool:
    return path.is_file() and path.suffix.lower() in (*IMAGE_SUFFIXES, *((".npy",) if arrays else ()))


def find_images(directory: Path, *, arrays: bool = False, what: str = "calibration") -> list[Path]:
    """Every image (and ``.npy`` array when ``arrays``) below ``directory``, sorted by relative path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such {what} directory")
    files = sorted((p for p in directory.rglob("*") if _is_image(p, arrays)), key=lambda p: p.relative_to(directory))
    if not files:
        kinds = ", ".join((*IMAGE_SUFFIXES, *((".npy",) if arrays else ())))
        raise InputError(f"{directory}: no images ({kinds}) for {what}, at any depth")
    return files


@dataclass(frozen=True)
class LabelledImages:
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]  # class index -> name (folder name, or the label as written)
    layout: str  # "imagefolder" | "labels.txt" | "labels.csv"


def labelled_images(directory: Path) -> LabelledImages:
    """The labelled images of an evaluation set (see the module's layouts)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such evaluation directory")
    for name in LABEL_FILES:
        if (directory / name).is_file():
            return _from_label_file(directory, directory / name)
    # Every (non-hidden) folder is a class, as torchvision's ImageFolder numbers them: skipping an empty one
    # would shift the indices of the classes after it, so an empty one is refused instead.
    classes = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"{directory}: not an evaluation set: no class folders (ImageFolder: DIR/<class>/<image>) "
                         f"and no {' or '.join(LABEL_FILES)}")
    paths, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (directory / name).rglob("*") if _is_image(p))
        if not found:
            raise InputError(f"{directory / name}: a class folder without images ({', '.join(IMAGE_SUFFIXES)}); "
                             "ImageFolder numbers every folder, so remove it or add its images")
        paths += found
        labels += [index] * len(found)
    return LabelledImages(directory, tuple(paths), tuple(labels), tuple(classes), "imagefolder")


def _from_label_file(directory: Path, label_file: Path) -> LabelledImages:
    lines = read_user_text(label_file).splitlines()
    rows = _csv_rows(label_file, lines) if label_file.suffix == ".csv" else (line.split() for line in lines)
    paths, labels = [], []
    seen: dict[PurePath, tuple[int, int]] = {}  # each image's line and label: one listed twice is refused
    for number, row in enumerate(rows, 1):
        if not row or row[0].startswith("#") or (number == 1 and not row[-1].strip().lstrip("-").isdigit()):
            continue  # blank lines, comments, a header
        if len(row) != 2 or not row[1].strip().isdigit():
            raise InputError(f"{label_file}:{number}: expected '<file> <class index>', got {' '.join(row)!r}")
        name = PurePath(row[0].strip())
        if name.is_absolute() or ".." in name.parts:
            raise InputError(f"{label_file}:{number}: {name} is outside {directory}: images are named relative to "
                             "the folder the label file is in, without '..'")
        name = PurePath(os.path.normpath(name))  # a.png and ./a.png are one image
        label = int(row[1])
        if name in seen:
            earlier, other = seen[name]
            what = "listed twice" if other == label else f"labelled {other} and {label}"
            raise InputError(f"{label_file}:{number}: {name} is {what} (lines {earlier} and {number}); list each "
                             "image once")
        path = directory / name
        if not _is_image(path):
            raise InputError(f"{label_file}:{number}: no image {path}")
        seen[name] = number, label
        paths.append(path)
        labels.append(label)
    if not paths:
        raise InputError(f"{label_file}: lists no images")
    classes = tuple(str(i) for i in range(max(labels) + 1))
    return LabelledImages(directory, tuple(paths), tuple(labels), classes, label_file.name)


def _csv_rows(label_file: Path, lines: list[str]) -> Iterator[list[str]]:
    reader = csv.reader(lines, strict=True)
    try:
        yield from reader
    except csv.Error as exc:  # an unclosed quote (which would otherwise swallow the lines after it)
        raise InputError(f"{label_file}:{reader.line_num}: not CSV ({exc})") from None


def content_sha256(root: Path, paths: Iterable[Path], extra: bytes = b"") -> str:
    """Hash of a set of files: relative names and bytes (a build depends on exactly these)."""
    digest = hashlib.sha256(extra)
    for path in paths:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
