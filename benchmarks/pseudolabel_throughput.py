"""Images/s of every pseudo-labeler, as `fourm pseudolabel` runs them (resize in, network,
resample back to the photo's size, conversion to the stored modality).

    python benchmarks/pseudolabel_throughput.py                             # tiny, CPU
    python benchmarks/pseudolabel_throughput.py --size real --device cuda   # a GPU machine

Speed does not depend on the weights, so the networks are randomly initialized: `tiny`
are the test configurations, `real` the published architectures (DPT-Hybrid 384 px,
Mask2Former Swin-B 384 px, DETR ResNet-50 640 px, CLIP ViT-B/16 224 px). The inputs are
scikit-image's photographs resized to --image-size.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np
from PIL import Image

from pseudolabel import clip_features, depth, detection, normals, semseg

LABELERS = {"depth": depth.DepthLabeler, "semseg": semseg.SemsegLabeler,
            "det": detection.DetectionLabeler, "clip": clip_features.ClipLabeler}
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


def photos(size: int, count: int) -> list[np.ndarray]:
  folder = os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0], "data")
  images = [np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")
                       .resize((size, size), Image.BILINEAR)) for name in PHOTOS]
  return [images[i % len(images)] for i in range(count)]


def rate(fn, images, batch: int, repeats: int, sync) -> float:
  """Images/s over `repeats` passes of `images` in batches, after one warm-up batch."""
  fn(images[:batch])
  sync()
  start = time.perf_counter()
  for _ in range(repeats):
    for i in range(0, len(images), batch):
      fn(images[i:i + batch])
  sync()
  return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
  parser.add_argument("--device", default="cpu")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--images", type=int, default=16, help="images per pass")
  parser.add_argument("--image-size", type=int, default=256, help="side of the input photos")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
  args = parser.parse_args()

  import torch
  if args.threads:
    torch.set_num_threads(args.threads)
  sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
  images = photos(args.image_size, args.images)
  print(f"{args.size} networks (random init) on {args.device}, {args.image_size} px photos, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}")
  print(f"{'labeler':<16} {'params':>12} {'input px':>9} {'images/s':>10}")
  built = {}
  for task, cls in LABELERS.items():
    labeler = built[task] = cls.tiny(args.device, args.size)
    params = sum(p.numel() for p in labeler.model.parameters())
    speed = rate(labeler, images, args.batch_size, args.repeats, sync)
    print(f"{task:<16} {params:>12,} {labeler.input_size:>9} {speed:>10.1f}")
  fallback = normals.NormalsFromDepth(built["depth"])
  depths = built["depth"](images)
  speed = rate(fallback.from_depth, depths, args.batch_size, args.repeats, lambda: None)
  print(f"{'normals (depth)':<16} {'-':>12} {args.image_size:>9} {speed:>10.1f}"
        "   from depth maps, numpy")


if __name__ == "__main__":
  main()
