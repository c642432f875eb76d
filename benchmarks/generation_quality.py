"""How good a checkpoint's generations are: issue 20's quality table (synthetic world).

    python benchmarks/generation_quality.py                  # the model `make demo` trains
    python benchmarks/generation_quality.py --checkpoint runs/tiny --data w/ w_tokens/

rgb -> depth and rgb -> segmentation are decoded greedily (MaskGIT, 4 steps) and scored
against the exact maps of held-out scenes, beside baselines that never look at the image
(`fourm/generation/evaluate.py`). rgb -> caption checks that a generated caption names
the largest object by its color and shape, and that the colors it names are the scene's.
rgb -> boxes scores the generated boxes by COCO AP50. caption -> rgb generates images
from held-out captions and checks, with a hue detector calibrated on the real images,
whether the colors the caption names are in the image more often than the colors it
does not name (chance). "image gain" is how much lower the tok_semseg cross-entropy is
with the right image than with another scene's: 0 for a model that ignores its image.
"ceiling" is what the true tokens score, decoded: no model can
do better through these tokenizers. The goals are issue 20's for the demo's model.
"""

from __future__ import annotations

import argparse
import time

from fourm.finetune.coco_metrics import CocoDetectionMetric
from fourm.generation import evaluate
from fourm.generation.generator import Generator
from fourm.generation.sampler import Decoding


def row(task: str, metric: str, model: float, baseline: str, goal: str, met: bool | None,
        ceiling: float | None = None):
  verdict = "" if met is None else ("yes" if met else "no")
  best = "-" if ceiling is None else f"{ceiling:.3f}"
  print(f"{task:<20} {metric:<19} {model:>6.3f} {baseline:>19} {best:>8} {goal:>8} "
        f"{verdict:>4}")


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

  from fourm import compilation_cache
  from fourm.generation.guidance import Guidance
  compilation_cache.enable()  # `make demo`'s fourm generate compiled much of this already
  generator = Generator.from_checkpoint(args.checkpoint)
  started = time.perf_counter()
  maps = evaluate.rgb_to_maps(generator, args.data, count=args.count)
  print(f"{args.checkpoint}: {maps['num_images']} held-out scenes")
  print(f"{'task':<20} {'metric':<19} {'model':>6} {'baseline':>19} {'ceiling':>8} "
        f"{'goal':>8} {'met':>4}")
  depth_goal = maps["depth_abs_rel_mean_map_baseline"] / 2
  row("rgb -> depth", "abs-rel (lower)", maps["depth_abs_rel"],
      f"{maps['depth_abs_rel_mean_map_baseline']:.3f} mean map", f"<= {depth_goal:.3f}",
      maps["depth_abs_rel"] <= depth_goal, maps["depth_abs_rel_tokenizer_ceiling"])
  row("rgb -> segmentation", "object mIoU", maps["semseg_object_miou"],
      f"{maps['semseg_object_miou_majority_map_baseline']:.3f} majority map", ">= 0.5",
      maps["semseg_object_miou"] >= 0.5, maps["semseg_object_miou_tokenizer_ceiling"])
  majority = maps["semseg_pixel_acc_majority_map_baseline"]
  row("rgb -> segmentation", "pixel accuracy", maps["semseg_pixel_acc"],
      f"{majority:.3f} majority map", f"> {majority:.3f}", maps["semseg_pixel_acc"] > majority,
      maps["semseg_pixel_acc_tokenizer_ceiling"])
  use = evaluate.image_use(generator, args.data, count=args.count)
  row("rgb -> segmentation", "image gain (nats)", use["gain"],
      f"{use['cross_entropy_other_image']:.3f} other image", "", None)
  if generator.model.can_predict("caption"):
    words = evaluate.rgb_to_caption(generator, args.data, count=args.count // 2)
    row("rgb -> caption", "largest obj. named", words["largest_object_rate"], "-", ">= 0.6",
        words["largest_object_rate"] >= 0.6)
    row("rgb -> caption", "named color in", words["named_color_rate"],
        f"{words['unnamed_color_rate']:.3f} unnamed", "", None)
  if generator.model.can_predict("det"):
    metric = CocoDetectionMetric(len(evaluate.OBJECT_CLASS_IDS))
    boxes = evaluate.rgb_to_boxes(generator, args.data, metric, count=args.count)
    row("rgb -> boxes", "AP50", boxes["box_ap50"], "-", ">= 0.3", boxes["box_ap50"] >= 0.3)
  if generator.model.can_predict("tok_rgb") and "tok_rgb" in generator.tokenizers:
    chain = [Decoding("tok_rgb", num_steps=args.rgb_steps, guidance=Guidance(scale=args.cfg_scale))]
    colors = evaluate.caption_to_rgb(generator, args.data, chain, count=args.count)
    gap = colors["named_color_rate"] - colors["unnamed_color_rate"]
    row("caption -> rgb", "named - unnamed", gap,
        f"{colors['named_color_rate']:.2f} vs {colors['unnamed_color_rate']:.2f}", ">= 0.30",
        gap >= 0.30)
  print(f"({time.perf_counter() - started:.0f} s)")
  if generator.model.can_predict("caption"):
    for truth, text in words["examples"]:
      print(f"  true caption: {truth!r}\n  generated:    {text!r}")
  if generator.model.can_predict("tok_rgb") and "tok_rgb" in generator.tokenizers:
    print(f"  caption -> rgb: permutation p = {colors['color_p_value']:.3f} over "
          f"{colors['named_color_count']} named colors; the detector finds named / unnamed "
          f"colors in {colors['real_named_color_rate']:.2f} / "
          f"{colors['real_unnamed_color_rate']:.2f} of the real images, and "
          f"{colors['tokenizer_named_color_rate']:.2f} / "
          f"{colors['tokenizer_unnamed_color_rate']:.2f} through the rgb tokenizer (the "
          f"ceiling); cfg {args.cfg_scale}, {colors['num_images']} captions")


if __name__ == "__main__":
  main()
