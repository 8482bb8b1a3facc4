"""Hostile uploads, built in bounded memory: shared by tests/test_hostile_uploads.py and
benchmarks/hostile.py."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np


def wide_csv(columns: int = 20_000, rows: int = 3) -> bytes:
    """A header of ``columns`` distinct names (the last is the label) and a few rows of zeros:
    129 KB at 20,000 columns."""
    header = ",".join([*(f"c{i}" for i in range(columns - 1)), "label"])
    body = "".join(",".join(["0"] * (columns - 1) + [str(r % 2)]) + "\n" for r in range(rows))
    return (header + "\n" + body).encode()


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def npz_of_zeros(rows: int = 125_000, features: int = 1_000) -> bytes:
    """X: ``rows`` × ``features`` float32 zeros (500 MB by default), y: 0/1; deflated to ~0.5 MB.
    Written a chunk at a time, so building it costs no more memory than the result."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((rows, features), "<f4"))
            chunk = bytes(4 * features * 1024)
            for start in range(0, rows, 1024):
                f.write(chunk[: 4 * features * min(1024, rows - start)])
        with archive.open("y.npy", "w") as f:
            f.write(_npy_header((rows,), "<i8"))
            f.write((np.arange(rows) % 2).astype("<i8").tobytes())
    return out.getvalue()


def npz_claiming(shape: tuple[int, ...] = (10_000_000, 1_000_000)) -> bytes:
    """An NPZ whose X header claims ``shape`` of float64 (72.8 TiB by default) and holds no data."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("X.npy", _npy_header(shape, "<f8"))
        archive.writestr("y.npy", _npy_header((shape[0],), "<i8"))
    return out.getvalue()


# ----- image uploads (tests/test_images.py) ---------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A 70-byte PNG whose header claims width × height grayscale pixels (and holds almost none)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + _png_chunk(b"IEND", b"")
    )


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def zip_declaring(expanded: int = 3_000_000_000) -> bytes:
    """A ZIP of one small PNG whose central directory claims it expands to ``expanded`` bytes."""
    payload = bytearray(zip_of({"cat/a.png": png_declaring(4, 4)}))
    directory = payload.rindex(b"PK\x01\x02")  # the member's central directory entry
    struct.pack_into("<I", payload, directory + 24, expanded)  # its uncompressed size
    return bytes(payload)


def idx_claiming(n: int = 1_000_000, h: int = 10_000, w: int = 10_000) -> bytes:
    """A ZIP of an IDX pair whose images header claims n × h × w bytes (and holds none)."""
    images = b"\x00\x00\x08\x03" + struct.pack(">III", n, h, w)
    labels = b"\x00\x00\x08\x01" + struct.pack(">I", n)
    return zip_of({"train-images-idx3-ubyte": images, "train-labels-idx1-ubyte": labels})
