"""The bytes of one record: a sample (a map of modalities) to msgpack and back.

Arrays are stored raw with their dtype and shape; text as str; boxes as a map of an
array and a list of str; user photos may stay as their original JPEG/PNG bytes
(`EncodedImage`), decoded on read. Encoding sorts keys, so equal samples give equal
bytes. Decoding failures are `RecordError`s naming the file, record and field.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import numpy as np
from PIL import Image, ImageOps

from fourm.errors import RecordError


@dataclasses.dataclass(frozen=True)
class EncodedImage:
  """A compressed image kept as its original bytes (JPEG/PNG), decoded on read."""
  data: bytes
  format: str


def _pack_value(value: Any) -> Any:
  if isinstance(value, np.ndarray):
    if value.dtype == object:
      raise TypeError("object arrays cannot be stored; use a list of str")
    return {"__nd__": [value.dtype.str, list(value.shape)],
            "data": np.ascontiguousarray(value).tobytes()}
  if isinstance(value, EncodedImage):
    return {"__img__": value.format, "data": value.data}
  if isinstance(value, Mapping):
    return {str(key): _pack_value(value[key]) for key in sorted(value)}
  if isinstance(value, (list, tuple)):
    return [_pack_value(item) for item in value]
  if isinstance(value, (str, bytes, int, float, bool)) or value is None:
    return value
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"cannot store a value of type {type(value).__name__}")


def _unpack_value(value: Any) -> Any:
  if isinstance(value, dict):
    if "__nd__" in value:
      dtype, shape = value["__nd__"]
      return np.frombuffer(value["data"], dtype=np.dtype(dtype)).reshape(shape)
    if "__img__" in value:
      return decode_image(value["data"])
    return {key: _unpack_value(item) for key, item in value.items()}
  if isinstance(value, list):
    return [_unpack_value(item) for item in value]
  return value


def encode_sample(sample: Mapping[str, Any]) -> bytes:
  """Serializes a sample deterministically (keys sorted), so equal samples give equal bytes."""
  return msgpack.packb(_pack_value(dict(sample)), use_bin_type=True)


def decode_sample(data: bytes, *, path: str | None = None, record: int | None = None,
                  keep: Iterable[str] | None = None) -> dict[str, Any]:
  """Parses one record; `keep` limits decoding to the named modalities (others skipped)."""
  try:
    packed = msgpack.unpackb(data, raw=False)
  except Exception as error:  # msgpack raises several unrelated types on garbage
    raise RecordError(f"not a valid record ({type(error).__name__}: {error})",
                      path=path, record=record) from error
  if not isinstance(packed, dict):
    raise RecordError("not a valid record (expected a map of modalities)", path=path,
                      record=record)
  names = packed if keep is None else [name for name in keep if name in packed]
  sample = {}
  for name in names:
    try:
      sample[name] = _unpack_value(packed[name])
    except Exception as error:
      raise RecordError(f"cannot decode ({type(error).__name__}: {error})",
                        path=path, record=record, field=name) from error
  return sample


def to_rgb8(image: Image.Image) -> np.ndarray:
  """Any PIL image -> uint8 RGB [H, W, 3], faithfully: 16- and 32-bit integer images are
  scaled to 8 bits (PIL's own convert("RGB") clips them at 255, whitening the image),
  transparent ones are composited over white (as a viewer shows them) instead of
  dropping alpha, and float images, whose range nothing fixes, are refused."""
  if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    values = np.asarray(image).astype(np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) <= 65535 else \
        float(np.iinfo(np.int32).max)
    grey = np.clip(np.round(values * 255.0 / top), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == "F":
    raise ValueError("a floating-point image has no fixed range to map to 8 bits; convert "
                     "it to an 8- or 16-bit PNG first")
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                             "transparency" in image.info):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
  return np.asarray(image.convert("RGB"))


def decode_image(data: bytes) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 [H, W, 3] (`to_rgb8`); raises on truncated or corrupt data."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()  # forces a full decode now, so truncation is caught here
    # Phone photos store their rotation in EXIF; pixels must come out upright.
    return to_rgb8(ImageOps.exif_transpose(image))
