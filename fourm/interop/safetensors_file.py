"""Reading and writing .safetensors files one tensor at a time, without torch.

The format: 8 bytes (little-endian u64) giving the header's length, the header (JSON:
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}),
then the tensors' bytes. The `safetensors` package loads or saves whole state dicts; a
converter of a 2.7B-parameter model must not hold two copies of it, so this module reads
each tensor with its own `pread` (no memory map whose touched pages would count as
resident) and writes each tensor as it comes. Every way a file can be wrong is one
`ReferenceFileError` naming the file (and the tensor).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from fourm.errors import FourmError

# safetensors dtype names -> numpy dtypes (bfloat16 from ml_dtypes, which jax ships).
DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024   # the safetensors library's own limit


class ReferenceFileError(FourmError, ValueError):
  """A file that is not what the converter needs: names the file and the tensor."""


class SafetensorsReader:
  """The tensors of one .safetensors file, read one at a time."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._fd = os.open(path, os.O_RDONLY)
    except OSError as error:
      raise ReferenceFileError(f"{path}: cannot open it ({os.strerror(error.errno)})"
                               ) from None
    try:
      self.header, self.metadata, self._data_start = self._read_header()
    except BaseException:
      os.close(self._fd)
      raise

  def _read_header(self):
    size = os.fstat(self._fd).st_size
    if size < 8:
      raise ReferenceFileError(f"{self.path}: not a safetensors file ({size} bytes, shorter "
                               "than the 8-byte header length)")
    (length,) = struct.unpack("<Q", os.pread(self._fd, 8, 0))
    if length > _MAX_HEADER or 8 + length > size:
      raise ReferenceFileError(
          f"{self.path}: not a safetensors file, or truncated (its first 8 bytes give a "
          f"header of {length} bytes; the file has {size})")
    try:
      header = json.loads(os.pread(self._fd, length, 8))
    except (UnicodeDecodeError, ValueError):
      raise ReferenceFileError(f"{self.path}: not a safetensors file (its header is not "
                               "JSON)") from None
    if not isinstance(header, dict):
      raise ReferenceFileError(f"{self.path}: not a safetensors file (its header is not a "
                               "JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + length, size - 8 - length
    for name, entry in header.items():
      where = f"{self.path}: tensor {name!r}"
      try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
      except (KeyError, TypeError, ValueError):
        raise ReferenceFileError(f"{where}: its header entry {entry!r} lacks dtype, shape "
                                 "or data_offsets") from None
      if dtype not in DTYPES:
        raise ReferenceFileError(f"{where}: dtype {dtype} is not one the converter reads "
                                 f"({', '.join(DTYPES)})")
      expected = math.prod(shape) * DTYPES[dtype].itemsize
      if end - begin != expected:
        raise ReferenceFileError(f"{where}: {end - begin} bytes for a {dtype} {shape} tensor "
                                 f"({expected} expected)")
      if end > data_size:
        raise ReferenceFileError(f"{where}: the file is truncated (the tensor ends at byte "
                                 f"{data_start + end}, the file at {size})")
    return header, dict(metadata), data_start

  def names(self) -> list[str]:
    return list(self.header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entry(name)["shape"])

  def dtype(self, name: str) -> str:
    return self._entry(name)["dtype"]

  def dtypes(self) -> set[str]:
    return {entry["dtype"] for entry in self.header.values()}

  def nbytes(self) -> int:
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for e in self.header.values())

  def _entry(self, name: str) -> dict:
    try:
      return self.header[name]
    except KeyError:
      raise ReferenceFileError(f"{self.path}: has no tensor {name!r}") from None

  def read(self, name: str) -> np.ndarray:
    """Tensor `name` as a fresh numpy array in the file's dtype."""
    entry = self._entry(name)
    begin, end = entry["data_offsets"]
    buffer = bytearray(end - begin)
    view, done = memoryview(buffer), 0
    while done < len(buffer):  # pread may return less than asked for
      got = os.preadv(self._fd, [view[done:]], self._data_start + begin + done)
      if got == 0:
        raise ReferenceFileError(f"{self.path}: tensor {name!r}: the file ended while "
                                 "reading it (truncated)")
      done += got
    return np.frombuffer(buffer, DTYPES[entry["dtype"]]).reshape(entry["shape"])

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_safetensors(path: str, entries: Iterable[tuple[str, tuple[int, ...], np.dtype]],
                      produce: Callable[[str], np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> int:
  """Writes a .safetensors file: the header from `entries` (name, shape, dtype), then each
  tensor as `produce(name)` makes it, so only one tensor is in memory at a time. Names
  are written sorted, as the safetensors library orders them. Returns the file's size."""
  entries = sorted(entries)
  header, offset = {}, 0
  for name, shape, dtype in entries:
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    header[name] = {"dtype": NAMES[np.dtype(dtype)], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header = {"__metadata__": dict(metadata), **header}
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
  partial = path + ".partial"
  with open(partial, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for name, shape, dtype in entries:
      array = np.ascontiguousarray(produce(name), dtype=dtype)
      if array.shape != tuple(shape):
        raise ValueError(f"tensor {name!r}: produced {array.shape}, header says {shape}")
      f.write(array.tobytes())
  os.replace(partial, path)  # a killed export leaves no half file under the real name
  return os.path.getsize(path)
