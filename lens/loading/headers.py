"""Checks of weight files before anything reads or allocates: regular files only, and headers whose sizes
and counts could be true of the file at hand.

A FIFO or device named `model.safetensors` would block the reader forever; a 60-byte GGUF that claims
2^62 metadata entries would have a reader loop and grow memory. These checks walk the header with every
length and count bounded by the bytes left in the file, so a bad file fails in milliseconds, and they
return the parameter count, so a memory budget can be checked before any weight is read.
"""

from __future__ import annotations

import json
import math
import mmap
import stat
import struct
from pathlib import Path

from lens.errors import CorruptCheckpointError

GGUF_MAGIC = b"GGUF"
# GGUF value types: 0..12 (gguf's GGUFValueType); the fixed-size ones by their struct format.
_GGUF_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_MAX_DIMS = 8
_MAX_SAFETENSORS_HEADER = 100 * 2**20  # the safetensors library's own limit
_SAFETENSORS_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
                      "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


def regular_file(path: Path) -> Path:
    """The path, if it is a regular file (a symlink to one counts); otherwise a CorruptCheckpointError."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CorruptCheckpointError(f"cannot read {path}: {err}") from err
    if not stat.S_ISREG(mode):
        raise CorruptCheckpointError(f"{path} is not a regular file (a FIFO, device, socket or folder); lens reads "
                                     f"weights and configs from regular files only")
    return path


def check_folder(folder: Path) -> None:
    """Every file in a model folder that a reader may open must be a regular file."""
    for entry in folder.iterdir():
        if not entry.is_dir():
            regular_file(entry)


class _Cursor:
    """Reads little-endian values from a buffer, never past its end."""

    def __init__(self, buffer, path: Path):
        self.buffer, self.pos, self.path = buffer, 0, path

    def left(self) -> int:
        return len(self.buffer) - self.pos

    def fail(self, what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.path} is not a readable GGUF file: {what} (at byte {self.pos} of "
                                      f"{len(self.buffer)})")

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            raise self.fail(f"{what} needs {n:,} bytes, only {self.left():,} are left")

    def read(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        self.need(size, what)
        value = struct.unpack_from("<" + fmt, self.buffer, self.pos)[0]
        self.pos += size
        return value

    def string(self, what: str) -> bytes:
        n = self.read("Q", what)
        self.need(n, what)
        self.pos += n
        return bytes(self.buffer[self.pos - n:self.pos])

    def value(self, kind: int, what: str, depth: int = 0):
        if kind in _GGUF_FIXED:
            return self.read(_GGUF_FIXED[kind], what)
        if kind == _GGUF_STRING:
            return self.string(what)
        if kind != _GGUF_ARRAY or depth > 1:
            raise self.fail(f"{what} has value type {kind}, which GGUF does not define here")
        item, count = self.read("I", what), self.read("Q", what)
        least = struct.calcsize("<" + _GGUF_FIXED[item]) if item in _GGUF_FIXED else 8 if item == _GGUF_STRING else 12
        self.need(count * least, f"{what}, an array of {count:,} entries")  # before any loop over them
        if item in _GGUF_FIXED:
            self.pos += count * least
            return None
        for _ in range(count):
            self.value(item, what, depth + 1)
        return None


def gguf_params(path: Path) -> int:
    """Validate a GGUF file's header (counts, lengths, tensor shapes and offsets against the file size)
    and return its parameter count."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    regular_file(path)
    with open(path, "rb") as file:
        size = path.stat().st_size
        if size < 24:
            raise CorruptCheckpointError(f"{path} is not a readable GGUF file: {size} bytes, shorter than its header")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            cursor = _Cursor(memoryview(buffer), path)
            try:
                return _walk_gguf(cursor, GGML_QUANT_SIZES, GGMLQuantizationType)
            finally:
                cursor.buffer.release()


def _walk_gguf(cursor: _Cursor, quant_sizes, quant_type) -> int:
    if bytes(cursor.buffer[:4]) != GGUF_MAGIC:
        raise cursor.fail("it does not start with the GGUF magic bytes")
    cursor.pos = 4
    version, n_tensors, n_kv = cursor.read("I", "version"), cursor.read("Q", "tensor count"), cursor.read("Q", "kv count")
    if version not in (2, 3):
        raise cursor.fail(f"version {version}; lens reads GGUF versions 2 and 3")
    cursor.need(n_kv * 13 + n_tensors * 24, f"{n_kv:,} metadata entries and {n_tensors:,} tensors")
    alignment = 32
    for i in range(n_kv):
        key = cursor.string(f"metadata key {i}")
        value = cursor.value(cursor.read("I", f"type of {key!r}"), f"metadata {key!r}")
        if key == b"general.alignment":
            if not (isinstance(value, int) and 0 < value <= 2**16):
                raise cursor.fail(f"general.alignment {value!r}")
            alignment = value
    tensors = []
    for i in range(n_tensors):
        name = cursor.string(f"tensor {i}'s name").decode(errors="replace")
        n_dims = cursor.read("I", f"{name}'s rank")
        if n_dims > _MAX_DIMS:
            raise cursor.fail(f"tensor {name!r} claims {n_dims} dimensions")
        shape = [cursor.read("Q", f"{name}'s shape") for _ in range(n_dims)]
        kind, offset = cursor.read("I", f"{name}'s type"), cursor.read("Q", f"{name}'s offset")
        try:
            block, block_bytes = quant_sizes[quant_type(kind)]
        except (ValueError, KeyError):
            raise cursor.fail(f"tensor {name!r} has an unknown type {kind}") from None
        n = math.prod(shape)
        tensors.append((name, n, offset, -(-n // block) * block_bytes))
    data_start = -(-cursor.pos // alignment) * alignment
    data_size = len(cursor.buffer) - data_start
    for name, _, offset, nbytes in tensors:
        if offset + nbytes > data_size:
            raise cursor.fail(f"tensor {name!r} claims bytes {offset:,}..{offset + nbytes:,} of a data section "
                              f"of {data_size:,}")
    return sum(n for _, n, _, _ in tensors)


def safetensors_params(path: Path) -> int:
    """Validate a safetensors file's header (its length, each tensor's shape, dtype and offsets against the
    file size) and return its parameter count."""
    regular_file(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{path} is not a valid safetensors file: {size} bytes")
        n = struct.unpack("<Q", head)[0]
        if n > min(_MAX_SAFETENSORS_HEADER, size - 8):
            raise CorruptCheckpointError(f"{path} is not a valid safetensors file: its header claims {n:,} bytes "
                                         f"of a {size:,}-byte file")
        try:
            header = json.loads(file.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptCheckpointError(f"{path} is not a valid safetensors file: a header that is not JSON "
                                         f"({err})") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path} is not a valid safetensors file: its header is not a JSON object")
    data_size, total = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            count = math.prod(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
            width = _SAFETENSORS_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from err
        if not 0 <= start <= end <= data_size or end - start != count * width:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} claims shape {info['shape']} of {info['dtype']} at "
                                         f"bytes {start:,}..{end:,} of a data section of {data_size:,}")
        total += count
    return total
