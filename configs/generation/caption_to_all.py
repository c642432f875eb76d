"""Caption -> every image modality, as the issue's example chain: the semantic layout
first, then the image, then the geometry that goes with it.

    fourm generate --checkpoint demo_out/train --schedule configs/generation/caption_to_all.py \
        --condition caption="a large red cube left of a small blue sphere." --out demo_out/gen

Each step's fields are `fourm.generation.sampler.Decoding`'s. The default chain fits the
demo's model; the `:clip` variant starts with the 4M-7 caption -> CLIP step, for models
trained with tok_clip.
"""

import ml_collections

from fourm.errors import UsageError


def get_config(variant: str = ""):
  config = ml_collections.ConfigDict()
  steps = [
      # 8x8 grids at the demo's layout: a few steps each (at 224 px, 14x14, use more).
      dict(target="tok_semseg", method="maskgit", num_steps=6, guidance=dict(scale=2.0)),
      dict(target="tok_rgb", method="roar", num_steps=8, temperature=3.0,
           temperature_end=0.5, temperature_schedule="linear", top_k=64),
      dict(target="tok_depth", num_steps=4, temperature=0.7),
      dict(target="tok_normal", num_steps=4, temperature=0.7),
      dict(target="det", temperature=0.7, max_new_tokens=60),
  ]
  if variant == "clip":  # the 4M-7 chain: caption -> CLIP -> rgb
    steps.insert(0, dict(target="tok_clip", num_steps=8, guidance=dict(scale=3.0)))
  elif variant:
    raise UsageError(f"configs/generation/caption_to_all.py: unknown variant {variant!r}; "
                     "one of ['clip']")
  config.steps = steps
  return config
