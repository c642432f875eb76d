"""Pseudo-labelers: off-the-shelf networks that add modalities to image-only data.

Each labeler is a small class with `from_pretrained(name_or_path)` (a hub id or a local
directory of published weights), `tiny()` (the same architecture, tiny and randomly
initialized: meaningless labels, for tests and demos) and a batch
`__call__(images) -> outputs`, one output per uint8 [H, W, 3] image, aligned with it.

| task | labeler | raw modality |
| --- | --- | --- |
| depth | `depth.DepthLabeler` (DPT / Depth Anything) | depth float32 [H, W] |
| normals | `normals.NormalsFromDepth` (depth + intrinsics) | normal float32 [H, W, 3] |
| semseg | `semseg.SemsegLabeler` (Mask2Former panoptic, folded) | semseg uint8 [H, W] |
| det | `detection.DetectionLabeler` (DETR family) | det {boxes, classes} |
| clip | `clip_features.ClipLabeler` (CLIP ViT-B/16) | clip float32 [G, G, D] |
| canny_edge | `canny.CannyLabeler` (scikit-image Canny) | canny_edge uint8 [H, W] (0 / 1) |
| color_palette | `palette.PaletteLabeler` (k-means in RGB) | color_palette uint8 [K, 3] |
| metadata | `metadata.MetadataLabeler` (statistics, counts) | metadata float32 [21] |

The last three need no network (their `tiny()` is the labeler itself); metadata reads
the record's other modalities too (`reads`, `label_records`; see `job.py`).

torch and transformers (the optional `[pseudolabel]` extra) are imported only when a
labeler is built, so importing this package, or running `fourm --help`, does not need
them. This package knows nothing about tokens.
"""

from fourm import modalities as _modalities

# task name (as `fourm pseudolabel --tasks` takes it) -> the raw modality it writes: the
# registry says which task writes which raw modality (`RawSpec.labeler`).
TASK_MODALITIES = _modalities.labeler_outputs()

# The published checkpoints used by default (hub ids; a local directory works as well).
DEFAULT_MODELS = {"depth": "Intel/dpt-hybrid-midas",
                  "semseg": "facebook/mask2former-swin-base-coco-panoptic",
                  "det": "facebook/detr-resnet-50",
                  "clip": "openai/clip-vit-base-patch16"}
