"""How good a checkpoint's generations are, against trivial baselines (synthetic world).

    python benchmarks/generation_quality.py                  # the model `make demo` trains
    python benchmarks/generation_quality.py --checkpoint runs/tiny --data w/ w_tokens/

rgb -> depth and rgb -> segmentation are decoded greedily (MaskGIT, 4 steps) and scored
against the exact maps of held-out scenes, beside baselines that never look at the image
(`fourm/generation/evaluate.py`). rgb -> caption checks that the colors a generated
caption names are the scene's. caption -> rgb generates images from held-out captions
and checks, with a hue detector calibrated on the real images, whether the colors the
caption names are in the image more often than the colors it does not name (chance).
"""

from __future__ import annotations

import argparse
import time

from fourm.generation import evaluate
from fourm.generation.generator import Generator
from fourm.generation.sampler import Decoding


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", default="demo_out/train")
  parser.add_argument("--data", nargs="+", default=["demo_out/world", "demo_out/tokens",
                                                    "demo_out/tokens_vq"])
  parser.add_argument("--count", type=int, default=100,
                      help="held-out scenes per task (rgb -> caption: half as many)")
  parser.add_argument("--rgb-steps", type=int, default=8, help="caption -> tok_rgb steps")
  parser.add_argument("--cfg-scale", type=float, default=3.0, help="caption -> tok_rgb")
  args = parser.parse_args()

  from fourm.generation.guidance import Guidance
  generator = Generator.from_checkpoint(args.checkpoint)
  started = time.perf_counter()
  maps = evaluate.rgb_to_maps(generator, args.data, count=args.count)
  print(f"{args.checkpoint}, {maps['num_images']} held-out scenes "
        f"({time.perf_counter() - started:.0f} s)")
  print(f"{'task':<26} {'metric':<16} {'model':>8} {'mean/majority':>14} {'per-pixel':>10}")
  print(f"{'rgb -> depth':<26} {'abs-rel (lower)':<16} {maps['depth_abs_rel']:>8.3f} "
        f"{maps['depth_abs_rel_mean_baseline']:>14.3f} "
        f"{maps['depth_abs_rel_mean_map_baseline']:>10.3f}")
  print(f"{'rgb -> segmentation':<26} {'pixel accuracy':<16} {maps['semseg_pixel_acc']:>8.3f} "
        f"{maps['semseg_pixel_acc_majority_baseline']:>14.3f} "
        f"{maps['semseg_pixel_acc_majority_map_baseline']:>10.3f}")
  print(f"{'rgb -> segmentation':<26} {'mIoU':<16} {maps['semseg_miou']:>8.3f} {'-':>14} "
        f"{maps['semseg_miou_majority_map_baseline']:>10.3f}")
  if generator.model.can_predict("caption"):
    words = evaluate.rgb_to_caption(generator, args.data, count=args.count // 2)
    print(f"{'rgb -> caption (greedy)':<26} {'named color in':<16} "
          f"{words['named_color_rate']:>8.3f} {'unnamed:':>14} "
          f"{words['unnamed_color_rate']:>10.3f}")
    print(f"  (the scene's colors are those its true caption names; permutation p = "
          f"{words['color_p_value']:.3f} over {words['named_color_count']} colors named)")
    for truth, text in words["examples"]:
      print(f"  true: {truth!r}\n   gen: {text!r}")
  if generator.model.can_predict("tok_rgb") and "tok_rgb" in generator.tokenizers:
    chain = [Decoding("tok_rgb", num_steps=args.rgb_steps, guidance=Guidance(scale=args.cfg_scale))]
    colors = evaluate.caption_to_rgb(generator, args.data, chain, count=args.count)
    print(f"{'caption -> rgb':<26} {'named color in':<16} "
          f"{colors['named_color_rate']:>8.3f} {'unnamed:':>14} "
          f"{colors['unnamed_color_rate']:>10.3f}")
    print(f"  (permutation p = {colors['color_p_value']:.3f} over "
          f"{colors['named_color_count']} named colors; the detector on the real images: named "
          f"{colors['real_named_color_rate']:.3f}, unnamed "
          f"{colors['real_unnamed_color_rate']:.3f}; through the rgb tokenizer (the ceiling): "
          f"named {colors['tokenizer_named_color_rate']:.3f}, unnamed "
          f"{colors['tokenizer_unnamed_color_rate']:.3f}; {colors['num_images']} captions, "
          f"cfg {args.cfg_scale})")


if __name__ == "__main__":
  main()
