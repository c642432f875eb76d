"""An rgb image -> every other modality of the model, most certain first.

    fourm generate --checkpoint demo_out/train --schedule configs/generation/rgb_to_all.py \
        --condition rgb=photo.png --out demo_out/gen_rgb

Dense predictions from an image are nearly deterministic, so they decode at a low
temperature; the caption and boxes come last and see every map generated before them.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.steps = [
      dict(target="tok_semseg", num_steps=4, temperature=0.0),
      dict(target="tok_depth", num_steps=4, temperature=0.0),
      dict(target="tok_normal", num_steps=4, temperature=0.0),
      dict(target="caption", temperature=0.0, max_new_tokens=40),
      dict(target="det", temperature=0.0, max_new_tokens=60),
  ]
  return config
