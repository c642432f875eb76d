"""Small builders shared by the data tests."""

import contextlib
import os

import numpy as np

from fourm import modalities
from fourm.data import records


@contextlib.contextmanager
def registered_modalities(*specs: modalities.ModalitySpec):
  """Test-only modalities in the registry for the duration of a block, then gone again
  (their raw sources too), so other tests see the registry as shipped."""
  for spec in specs:
    modalities.register(spec)
  try:
    yield
  finally:
    for spec in specs:
      modalities.unregister(spec.name)
      modalities.RAW_MODALITIES.pop(spec.source.name, None)


def striped_sample(height: int = 48, width: int = 64, stripe: int = 8) -> dict:
  """A sample whose modalities encode where each pixel came from, so alignment is checkable.

  depth = the pixel center's x coordinate (in source pixels), semseg = x // stripe,
  rgb red channel = y, normals tilted in x, one box around stripe 2.
  """
  ys, xs = np.mgrid[0:height, 0:width]
  normal = np.zeros((height, width, 3), np.float32)
  normal[..., 0], normal[..., 2] = 0.6, -0.8
  return {
      "rgb": np.stack([ys * 4, np.zeros_like(ys), xs * 2], -1).astype(np.uint8),
      "depth": (xs + 0.5).astype(np.float32),
      "normal": normal,
      "semseg": (xs // stripe).astype(np.uint8),
      "clip": np.repeat(np.arange(8, dtype=np.float32)[None, :, None], 8, 0).repeat(4, 2),
      "det": {"boxes": np.array([[2 * stripe / width, 0, 3 * stripe / width, 1]], np.float32),
              "classes": ["stripe2"]},
      "caption": "stripes.",
  }


def write_dataset(directory: str, samples_by_split: dict, records_per_shard: int = 10,
                  metadata: dict | None = None) -> records.DatasetInfo:
  """Writes lists of samples as a records dataset (several shards per split)."""
  os.makedirs(directory, exist_ok=True)
  splits, stats = {}, []
  for split, samples in samples_by_split.items():
    ranges = records.split_into_shards(len(samples), records_per_shard)
    for k, indices in enumerate(ranges):
      name = records.shard_name(split, k, len(ranges))
      count, shard_stats = records.write_shard(
          os.path.join(directory, name), (samples[i] for i in indices), first_record=indices.start)
      splits.setdefault(split, []).append((name, count))
      stats.append(shard_stats)
  return records.write_info(directory, "test", splits, stats, metadata)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_train_data(root) -> tuple[str, str]:
  """A 48-scene synthetic world and its rgb / semseg patch tokens under `root`: the data
  of the small training runs (`small_config`)."""
  from fourm.data import patch_tokens, world
  scenes, tokens = os.path.join(root, "world"), os.path.join(root, "tokens")
  world.write_world(scenes, 48, resolution=64, seed=0, val_fraction=1 / 6, workers=1,
                    progress=False, log=lambda _: None)
  patch_tokens.write_patch_tokens(scenes, tokens, modalities.SMALL_LAYOUT,
                                  ("tok_rgb", "tok_semseg"), progress=False, log=lambda _: None)
  return scenes, tokens


def small_config(data, **overrides):
  """The tiny 4M run the training tests use: two blocks of width 32 over `data`."""
  from fourm import config as config_lib
  config = config_lib.load_config(os.path.join(ROOT, "configs/tiny_synthetic.py:smoke"))
  config.modalities = ("rgb", "tok_rgb", "tok_semseg", "caption")
  config.data.paths = tuple(data)
  config.model.dim, config.model.num_heads = 32, 2
  config.model.encoder_depth = config.model.decoder_depth = 1
  config.input_budget = config.target_budget = 32
  config.log_every, config.eval_every = 1, 3
  config.checkpoint.async_save = False
  config.mesh.data = 1
  for key, value in overrides.items():
    config_lib.apply_override(config, f"{key}={value!r}")
  return config
