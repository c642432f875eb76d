"""`fourm ingest`: a folder of the user's JPEG/PNG images (+ captions) -> a records dataset.

Images keep their original bytes (`EncodedImage`), so nothing is lost to re-encoding;
other formats PIL reads are stored as PNG. Each image is fully decoded once here, so a
corrupt or truncated file fails now, by name, not hours into training. With
`skip_bad=True` such files are left out, counted, and listed in the dataset info.

Captions come from a JSON object {"relative/path.jpg": "caption"}, JSON lines
({"image": ..., "caption": ...} per line), or a two-column TSV (path<TAB>caption).
Images without a caption simply have no caption modality; a caption naming an image
that is not in the folder is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

from tqdm import tqdm

from fourm.data import records
from fourm.data.ingest_common import check_image
from fourm.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def find_images(folder: str) -> list[str]:
  """Relative paths of the images under `folder`, sorted (the record order)."""
  if not os.path.isdir(folder):
    raise records.RecordError("no such image folder", path=folder)
  found = []
  for root, _, files in os.walk(folder):
    for name in files:
      if name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  if not found:
    raise records.RecordError(f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)})",
                              path=folder)
  return sorted(found)


def read_captions(path: str) -> dict[str, str]:
  """Parses a captions file into {relative image path: caption}."""
  def bad(line: int | None, message: str):
    raise records.RecordError(message, path=path, record=line, field="caption")

  if not os.path.exists(path):
    raise records.RecordError("no such captions file", path=path)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if path.endswith(".json"):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as error:
      bad(None, f"invalid JSON ({error})")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
      bad(None, 'expected a JSON object {"image path": "caption", ...}')
    return {os.path.normpath(k): v for k, v in data.items()}
  captions = {}
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    if path.endswith(".jsonl"):
      try:
        entry = json.loads(line)
        image, caption = entry["image"], entry["caption"]
      except (json.JSONDecodeError, KeyError, TypeError) as error:
        bad(number, f'expected {{"image": ..., "caption": ...}} ({error})')
    else:
      if "\t" not in line:
        bad(number, "expected 'image path<TAB>caption'")
      image, caption = line.split("\t", 1)
    if not isinstance(caption, str):
      bad(number, "caption must be a string")
    image = os.path.normpath(image)
    if image in captions:
      bad(number, f"second caption for {image!r}")
    captions[image] = caption
  return captions


def load_image(folder: str, relative: str) -> records.EncodedImage:
  """Reads and fully decodes one image; returns its bytes in a storable form (JPEG and
  PNG as they are, anything else as a PNG of its pixels)."""
  path = os.path.join(folder, relative)
  with open(path, "rb") as f:
    data = f.read()
  return check_image(data, path=path).image


def _split_of(relative: str, val_fraction: float) -> str:
  # A hash of the path, not its position, so adding images never moves others across splits.
  digest = int(hashlib.sha1(relative.encode()).hexdigest()[:8], 16)
  return "val" if digest % 10_000 < val_fraction * 10_000 else "train"


def ingest(images: str, out: str, captions: str | None = None, val_fraction: float = 0.0,
           records_per_shard: int = 1000, skip_bad: bool = False, progress: bool = True,
           log: Callable[[str], None] = print) -> records.DatasetInfo:
  files = find_images(images)
  caption_of = read_captions(captions) if captions else {}
  unknown = sorted(set(caption_of) - set(files))
  if unknown:
    raise records.RecordError(f"{len(unknown)} captions name images that are not in "
                              f"{images}, e.g. {unknown[:3]}", path=captions, field="caption")
  if os.path.exists(os.path.join(out, records.INFO_FILE)):
    raise UsageError(f"{out} already holds a dataset; choose a new --out directory")
  os.makedirs(out, exist_ok=True)

  by_split: dict[str, list[str]] = {}
  for relative in files:
    by_split.setdefault(_split_of(relative, val_fraction), []).append(relative)

  skipped: list[dict[str, str]] = []
  splits, stats = {}, []
  bar = tqdm(total=len(files), unit="image", disable=not progress, desc="ingest")
  for split in sorted(by_split):
    names = by_split[split]
    ranges = records.split_into_shards(len(names), records_per_shard)
    for k, indices in enumerate(ranges):
      # One shard's images in memory at a time; a skipped image makes its shard shorter.
      good = []
      for relative in (names[i] for i in indices):
        try:
          good.append((relative, load_image(images, relative)))
        except records.RecordError as error:
          if not skip_bad:
            raise
          skipped.append({"path": relative, "error": str(error)})
          log(f"skipped {error}")
        bar.update(1)
      name = records.shard_name(split, k, len(ranges))
      first = sum(n for _, n in splits.get(split, []))
      samples = ({"rgb": image, "key": relative,
                  **({"caption": caption_of[relative]} if relative in caption_of else {})}
                 for relative, image in good)
      count, shard_stats = records.write_shard(os.path.join(out, name), samples,
                                               first_record=first)
      splits.setdefault(split, []).append((name, count))
      stats.append(shard_stats)
  bar.close()
  if len(skipped) == len(files):
    raise records.RecordError(f"all {len(files)} images failed to decode", path=images)
  metadata = {"created_by": "fourm ingest", "source": os.path.abspath(images),
              "captions": os.path.abspath(captions) if captions else None,
              "num_images": len(files), "num_skipped": len(skipped), "skipped": skipped}
  if skipped:
    log(f"{len(skipped)} of {len(files)} images could not be read and were skipped "
        f"(listed in {os.path.join(out, records.INFO_FILE)})")
  return records.write_info(out, "ingested_images", splits, stats, metadata)
