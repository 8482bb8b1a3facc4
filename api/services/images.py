"""Image uploads, decoded once at upload into a uint8 array N×C×H×W (channel-major, as CIFAR's binary
records and torch's convolutions have it) with class names and per-channel statistics.

Three sources, in the formats people have them:

- ``image_folder``: a ZIP of ``class_name/*.png|jpg|jpeg`` (one folder per class, optionally all
  under one common top folder); the class of an image is its folder's name, classes sorted by name.
  Every image must have the size of the first; the array has 1 channel when every image is
  grayscale (Pillow modes 1, L, LA), else 3 (RGB; alpha dropped).
- ``idx``: a ZIP holding an MNIST-family pair, an images file (unsigned bytes, N×H×W) and a labels
  file (N), each plain or gzipped (``train-images-idx3-ubyte.gz`` as distributed); the two are told
  apart by their headers, not their names.
- ``cifar10`` / ``cifar100``: the *binary* version: one ``.bin`` batch, or a ZIP of them (records of
  1 label byte, or coarse and fine label bytes, then 3072 pixel bytes). The pickled Python version
  is refused: nothing here ever unpickles.

Sizes are checked before anything is decoded: the ZIP's member count and declared uncompressed
total, each image's pixel count from its header (before Pillow's ``load()``), IDX header dimensions
against the bytes that follow, and the decoded array's size. Member names only pick classes and
formats: no filesystem path is ever built from them (nothing is extracted to disk).

Pillow and numpy only: the API process stays torch-free.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_FORMATS = ("image_folder", "idx", "cifar10", "cifar100")
MAX_MEMBERS = 200_000
MAX_EXPANDED_BYTES = 512 * 1024 * 1024  # what a ZIP's members may add up to once decompressed
MAX_IMAGE_PIXELS = 4096 * 4096  # per image, read from its header before it is decoded
MAX_DECODED_BYTES = 256 * 1024 * 1024  # the N×C×H×W uint8 array
MAX_CLASS_NAME = 200
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PILLOW_FORMATS = ("PNG", "JPEG")
GRAYSCALE_MODES = ("1", "L", "LA")
COLOR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr")
STATS_CHUNK = 4096  # images per step of the mean/std pass: bounded float memory
CIFAR_PIXELS = 3 * 32 * 32
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_NAME_FILES = {"cifar10": "batches.meta.txt", "cifar100": "fine_label_names.txt"}
MAX_NAME_FILE_BYTES = 64 * 1024
IDX_UBYTE = 0x08


class ImageError(ValueError):
    """Bad image upload: the message names the field (file, format) and the member; becomes a 422."""


@dataclass
class Decoded:
    X: np.ndarray  # uint8, (N, C, H, W)
    y: np.ndarray  # int64 class indices into ``classes``
    classes: list[str]
    source: str  # one of IMAGE_FORMATS


# ----- what was uploaded ----------------------------------------------------------------------
def is_pickle(head: bytes) -> bool:
    """A pickle of protocol 2 or later starts with PROTO (0x80) and its number: CIFAR's Python
    version is one. A CIFAR label byte is never 0x80, so a binary batch never looks like this."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def refuse_pickle(head: bytes, where: str) -> None:
    if is_pickle(head):
        raise ImageError(
            f"file: {where} is a Python pickle (the CIFAR 'python version'?); pickles are never loaded. "
            "Upload the binary version (data_batch_*.bin, train.bin) instead"
        )


def detect_image_format(payload: bytes, filename: str | None) -> str | None:
    """One of IMAGE_FORMATS when the upload is images, else None (a CSV or an NPZ)."""
    name = (filename or "").lower()
    refuse_pickle(payload[:2], "the upload")
    if payload.startswith(b"\x1f\x8b"):
        raise ImageError(
            "file: a gzip or tar.gz archive; unpack it and upload a ZIP (an image folder, an IDX pair, "
            "CIFAR .bin batches) or one CIFAR .bin batch"
        )
    if payload.startswith(b"PK\x03\x04"):
        return _zip_format(payload)
    if name.endswith(".bin"):
        return cifar_variant([name], len(payload))
    if payload.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        raise ImageError("file: a single image; upload a ZIP of class folders (class_name/image.png)")
    if payload[:3] == b"\x00\x00\x08":
        raise ImageError("file: a lone IDX file; upload a ZIP holding the images file and the labels file")
    return None


def _zip_format(payload: bytes) -> str | None:
    try:
        zipfile.ZipFile(io.BytesIO(payload)).close()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError):
        return None  # the NPZ parser says what is wrong with it
    with open_zip(payload) as archive:
        names = [info.filename for info in archive.infolist() if not _skipped(info)]
        _refuse_pickled_members(archive, names)
        if any(n.endswith(".npy") for n in names):
            return None
        bins = [n.rsplit("/", 1)[-1].lower() for n in names if n.lower().endswith(".bin")]
        if bins:
            return cifar_variant(
                bins, sum(archive.getinfo(n).file_size for n in names if n.lower().endswith(".bin"))
            )
        if any("idx" in n.rsplit("/", 1)[-1].lower() for n in names):
            return "idx"
        return "image_folder"


def _refuse_pickled_members(archive: zipfile.ZipFile, names: list[str]) -> None:
    """CIFAR's Python version zipped (cifar-10-batches-py/data_batch_1, ...): refused by name."""
    for name in names:
        if not name.lower().endswith((*IMAGE_SUFFIXES, ".npy")):
            try:
                head = _read(archive, archive.getinfo(name), 2)
            except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError):
                raise ImageError(f"file: unreadable ZIP member {name[:200]!r}") from None
            refuse_pickle(head, repr(name[:200]))


def cifar_variant(names: list[str], size: int) -> str:
    """CIFAR-10's batches are data_batch_N.bin and test_batch.bin, CIFAR-100's train.bin and test.bin;
    other names decide by the record size that divides the bytes."""
    if all(re.fullmatch(r"(data_batch_\d+|test_batch)\.bin", n) for n in names):
        return "cifar10"
    if all(n in ("train.bin", "test.bin") for n in names):
        return "cifar100"
    fits = [
        v
        for v, record in (("cifar10", 1 + CIFAR_PIXELS), ("cifar100", 2 + CIFAR_PIXELS))
        if size % record == 0
    ]
    if len(fits) != 1:
        raise ImageError(
            "format: cannot tell CIFAR-10 from CIFAR-100 by these .bin files; send format=cifar10 or cifar100"
        )
    return fits[0]


def open_zip(payload: bytes) -> zipfile.ZipFile:
    """The archive, after its declared sizes were checked (zipfile never yields more bytes from a
    member than the size its entry declares, so these bound what decompression can produce)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError):
        raise ImageError("file: not a valid ZIP archive") from None
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ImageError(f"file: the ZIP holds {len(infos):,} members; at most {MAX_MEMBERS:,}")
    expanded = sum(info.file_size for info in infos)
    if expanded > MAX_EXPANDED_BYTES:
        raise ImageError(f"file: the ZIP expands to {expanded:,} bytes, over {MAX_EXPANDED_BYTES:,}")
    return archive


def _skipped(info: zipfile.ZipInfo) -> bool:
    """Folders and what archivers add on their own (macOS's __MACOSX/ and ._ files, .DS_Store)."""
    parts = info.filename.split("/")
    return info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1] == ""


def decode(payload: bytes, fmt: str) -> Decoded:
    if fmt in ("cifar10", "cifar100") and not payload.startswith(b"PK\x03\x04"):
        return decode_cifar(payload, fmt, CIFAR10_CLASSES if fmt == "cifar10" else None)
    with open_zip(payload) as archive:
        try:
            if fmt == "image_folder":
                return decode_image_folder(archive)
            if fmt == "idx":
                return decode_idx(archive)
            return decode_cifar_zip(archive, fmt)
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
            raise ImageError(f"file: unreadable ZIP member: {exc}") from None


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int | None = None) -> bytes:
    with archive.open(info) as f:
        return f.read(limit) if limit is not None else f.read()


# ----- image folder ---------------------------------------------------------------------------
@dataclass
class _Entry:
    info: zipfile.ZipInfo
    label: int = 0


def decode_image_folder(archive: zipfile.ZipFile) -> Decoded:
    members = _class_members(archive)
    classes = sorted({cls for cls, _ in members})
    index = {name: i for i, name in enumerate(classes)}
    entries = [_Entry(info, index[cls]) for cls, info in members]
    (h, w), channels = _common_geometry(archive, entries)
    _check_decoded(len(entries), channels, h, w)
    X = np.empty((len(entries), channels, h, w), np.uint8)
    mode = "L" if channels == 1 else "RGB"
    for i, entry in enumerate(entries):
        pixels = _pixels(archive, entry.info, mode)
        X[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return Decoded(X, np.array([e.label for e in entries], np.int64), classes, "image_folder")


def _class_members(archive: zipfile.ZipFile) -> list[tuple[str, zipfile.ZipInfo]]:
    """(class, member) for every image: the class is the image's folder; every image lies at the
    same depth under the same top folders, so train/cat and test/cat never merge into one class."""
    members, top = [], None
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        if _skipped(info):
            continue
        parts = info.filename.split("/")
        if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
            raise ImageError(f"file: {info.filename[:200]!r} is not a .png, .jpg or .jpeg image")
        if len(parts) < 2:
            raise ImageError(
                f"file: {info.filename[:200]!r} is not in a class folder; the layout is class_name/image.png"
            )
        if top is None:
            top = parts[:-2]
        if parts[:-2] != top:
            raise ImageError(
                f"file: {info.filename[:200]!r} is not under {'/'.join(top) or 'the top level'} like the "
                "first image; the layout is class_name/image.png (one level of class folders)"
            )
        if len(parts[-2]) > MAX_CLASS_NAME:
            raise ImageError(f"file: a class folder name is over {MAX_CLASS_NAME} characters")
        members.append((parts[-2], info))
    if not members:
        raise ImageError("file: the ZIP holds no .png, .jpg or .jpeg images")
    return members


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Image.Image:
    """The image with its header read and its size checked; its pixels are not decoded yet."""
    where = f"image {info.filename[:200]!r}"
    try:
        image = Image.open(io.BytesIO(_read(archive, info)), formats=PILLOW_FORMATS)
    except Image.DecompressionBombError:
        raise ImageError(f"file: {where} declares more pixels than {MAX_IMAGE_PIXELS:,}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"file: {where} is not a readable PNG or JPEG") from None
    w, h = image.size
    if w * h > MAX_IMAGE_PIXELS:
        image.close()
        raise ImageError(f"file: {where} is {w}×{h} pixels; at most {MAX_IMAGE_PIXELS:,} per image")
    return image


def _pixels(archive: zipfile.ZipFile, info: zipfile.ZipInfo, mode: str) -> np.ndarray:
    """The decoded pixels, (H, W) or (H, W, 3); the size was checked when the header was read."""
    with _header(archive, info) as image:
        try:
            return np.asarray(image.convert(mode))
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"file: image {info.filename[:200]!r} cannot be decoded: {exc}") from None


def _common_geometry(archive: zipfile.ZipFile, entries: list[_Entry]) -> tuple[tuple[int, int], int]:
    """((H, W), channels) from every image's header: all must have the first one's size."""
    first, color = None, False
    for entry in entries:
        with _header(archive, entry.info) as image:
            size, mode = (image.height, image.width), image.mode
        if first is None:
            first = size
        if size != first:
            raise ImageError(
                f"file: image {entry.info.filename[:200]!r} is {size[1]}×{size[0]}; the first image is "
                f"{first[1]}×{first[0]} (every image must have the same size: resize them first)"
            )
        if mode not in GRAYSCALE_MODES + COLOR_MODES:
            raise ImageError(
                f"file: image {entry.info.filename[:200]!r} has mode {mode}; 8-bit grayscale or color only"
            )
        color = color or mode in COLOR_MODES
    assert first is not None
    return first, 3 if color else 1


def _check_decoded(n: int, channels: int, h: int, w: int) -> None:
    size = n * channels * h * w
    if size > MAX_DECODED_BYTES:
        raise ImageError(
            f"file: {n:,} images of {channels}×{h}×{w} decode to {size:,} bytes, over {MAX_DECODED_BYTES:,}"
        )
    if h * w > MAX_IMAGE_PIXELS:
        raise ImageError(f"file: images of {h}×{w} pixels; at most {MAX_IMAGE_PIXELS:,} per image")


# ----- MNIST-family IDX -----------------------------------------------------------------------
@dataclass
class _Idx:
    name: str
    dims: tuple[int, ...]
    data: np.ndarray | None = None


def decode_idx(archive: zipfile.ZipFile) -> Decoded:
    members = [info for info in archive.infolist() if not _skipped(info)]
    found = [_idx_header(archive, info) for info in members]
    images = [f for f in found if len(f[1].dims) == 3]
    labels = [f for f in found if len(f[1].dims) == 1]
    if len(images) != 1 or len(labels) != 1 or len(found) != 2:
        raise ImageError(
            "file: an IDX upload is a ZIP of exactly two IDX files: images (N×H×W) and labels (N); "
            f"this one has {len(images)} images and {len(labels)} labels file(s) among {len(found)}"
        )
    (image_info, image_idx), (label_info, label_idx) = images[0], labels[0]
    n, h, w = image_idx.dims
    if label_idx.dims[0] != n:
        raise ImageError(f"file: {n:,} images but {label_idx.dims[0]:,} labels")
    _check_decoded(n, 1, h, w)
    X = _idx_data(archive, image_info, image_idx).reshape(n, 1, h, w)
    y = _idx_data(archive, label_info, label_idx).astype(np.int64)
    classes = [str(k) for k in range(int(y.max()) + 1)] if len(y) else []
    return Decoded(X, y, classes, "idx")


def _idx_stream(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    """The member's IDX bytes, gunzipped as they are read when the member is gzipped (the reads
    below are bounded by the header's dimensions, so a gzip bomb is never expanded)."""
    raw = archive.open(info)
    if raw.read(2) == b"\x1f\x8b":
        raw.close()
        return gzip.GzipFile(fileobj=archive.open(info))
    raw.close()
    return archive.open(info)


def _idx_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[zipfile.ZipInfo, _Idx]:
    where = f"{info.filename[:200]!r}"
    with _idx_stream(archive, info) as f:
        try:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\x00\x00":
                refuse_pickle(magic, where)
                raise ImageError(f"file: {where} is not an IDX file (no IDX magic number)")
            if magic[2] != IDX_UBYTE:
                raise ImageError(f"file: {where} holds IDX type 0x{magic[2]:02X}; only unsigned bytes (0x08)")
            ndim = magic[3]
            if ndim not in (1, 3):
                raise ImageError(f"file: {where} has {ndim} dimensions; images have 3 (N×H×W), labels 1")
            dims = np.frombuffer(f.read(4 * ndim), ">u4")
        except (OSError, EOFError) as exc:
            raise ImageError(f"file: {where}: unreadable gzip: {exc}") from None
    if len(dims) != ndim:
        raise ImageError(f"file: {where} ends inside its IDX header")
    return info, _Idx(info.filename, tuple(int(d) for d in dims))


def _idx_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, idx: _Idx) -> np.ndarray:
    """Exactly the bytes the header claims: fewer or more is a 422."""
    expected = math.prod(idx.dims)
    with _idx_stream(archive, info) as f:
        try:
            f.read(4 + 4 * len(idx.dims))
            data = f.read(expected)
            extra = f.read(1)
        except (OSError, EOFError) as exc:
            raise ImageError(f"file: {info.filename[:200]!r}: unreadable gzip: {exc}") from None
    if len(data) != expected or extra:
        raise ImageError(
            f"file: {info.filename[:200]!r} claims {idx.dims} ({expected:,} bytes) but holds "
            f"{'more' if extra else f'{len(data):,}'} bytes"
        )
    return np.frombuffer(data, np.uint8)


# ----- CIFAR binary ---------------------------------------------------------------------------
def decode_cifar_zip(archive: zipfile.ZipFile, fmt: str) -> Decoded:
    members = [i for i in archive.infolist() if not _skipped(i)]
    batches = sorted((i for i in members if i.filename.lower().endswith(".bin")), key=lambda i: i.filename)
    if not batches:
        raise ImageError("file: the ZIP holds no CIFAR .bin batches")
    for info in members:
        refuse_pickle(_read(archive, info, 2), repr(info.filename[:200]))
    payload = b"".join(_read(archive, info) for info in batches)
    return decode_cifar(payload, fmt, _class_names(archive, members, fmt))


def _class_names(
    archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], fmt: str
) -> tuple[str, ...] | None:
    """The archive's own class names (batches.meta.txt, fine_label_names.txt) if it has them."""
    wanted = CIFAR_NAME_FILES[fmt]
    for info in members:
        if info.filename.rsplit("/", 1)[-1] == wanted and info.file_size <= MAX_NAME_FILE_BYTES:
            text = _read(archive, info).decode("utf-8", "replace")
            return tuple(line.strip()[:MAX_CLASS_NAME] for line in text.splitlines() if line.strip())
    return CIFAR10_CLASSES if fmt == "cifar10" else None


def decode_cifar(payload: bytes, fmt: str, names: tuple[str, ...] | None) -> Decoded:
    refuse_pickle(payload[:2], "the upload")
    label_bytes, n_classes = (1, 10) if fmt == "cifar10" else (2, 100)
    title = "CIFAR-10" if fmt == "cifar10" else "CIFAR-100"
    record = label_bytes + CIFAR_PIXELS
    if len(payload) % record:
        raise ImageError(
            f"file: {len(payload):,} bytes is not a whole number of {title} binary records "
            f"({record} bytes each: {label_bytes} label byte(s) and 3072 pixels)"
        )
    n = len(payload) // record
    _check_decoded(n, 3, 32, 32)
    records = np.frombuffer(payload, np.uint8).reshape(n, record)
    y = records[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: the fine label (after the coarse)
    bad = np.flatnonzero(y >= n_classes)
    if len(bad):
        raise ImageError(
            f"file: record {int(bad[0]) + 1} has label {int(y[bad[0]])}; {title} has classes "
            f"0–{n_classes - 1} (is this the {title} binary version?)"
        )
    classes = list(names) if names and len(names) == n_classes else [str(k) for k in range(n_classes)]
    X = records[:, label_bytes:].reshape(n, 3, 32, 32).copy()
    return Decoded(X, y, classes, fmt)


# ----- what gets stored -----------------------------------------------------------------------
def channel_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the pixels (0–255), a chunk of images at a time."""
    channels = X.shape[1]
    total, squares = np.zeros(channels), np.zeros(channels)
    for start in range(0, len(X), STATS_CHUNK):
        chunk = X[start : start + STATS_CHUNK].astype(np.float64)
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = max(1, len(X) * X.shape[2] * X.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def image_payload(decoded: Decoded) -> tuple[bytes, dict[str, Any]]:
    """The artifact (an NPZ of X, y, mean, std, classes; no objects, so it loads without pickle)
    and the facts kept on the dataset row."""
    mean, std = channel_stats(decoded.X)
    buffer = io.BytesIO()
    np.savez(
        buffer, X=decoded.X, y=decoded.y, mean=mean, std=std, classes=np.array(decoded.classes, dtype=str)
    )
    info = {
        "source": decoded.source,
        "layout": "NCHW uint8",
        "classes": decoded.classes,
        "mean": [round(float(m), 4) for m in mean],
        "std": [round(float(s), 4) for s in std],
    }
    return buffer.getvalue(), info
