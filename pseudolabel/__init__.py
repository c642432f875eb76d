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
| sam_edge | `sam.SamEdgeLabeler` (SAM ViT-H automatic masks) | sam_edge uint8 [H, W] (0 / 1) |
| sam_instance | `sam.SamInstanceLabeler` (same masks) | sam_instance_masks int32 [R, 22 + 4096] |
| dinov2 | `dinov2.Dinov2Labeler` (DINOv2 ViT-B/14) | dinov2 float32 [G, G, 768] |
| dinov2_global | `dinov2.Dinov2GlobalLabeler` (the same pass) | dinov2_global float32 [768] |
| human_keypoints | `human_poses.HumanKeypointsLabeler` | human_keypoints float32 [N, 56] |
| t5_caption | `t5_caption.T5CaptionLabeler` (T5 v1.1 XXL encoder) | t5_caption float32 [L, 4096] |
| canny_edge | `canny.CannyLabeler` (scikit-image Canny) | canny_edge uint8 [H, W] (0 / 1) |
| color_palette | `palette.PaletteLabeler` (k-means in RGB) | color_palette uint8 [K, 3] |
| metadata | `metadata.MetadataLabeler` (statistics, counts) | metadata float32 [21] |

The last three need no network (their `tiny()` is the labeler itself). metadata reads
the record's other modalities too, and t5_caption reads its caption instead of the image
(`reads`, `label_records`; see `job.py`). sam_edge and sam_instance share one SAM run,
dinov2 and dinov2_global one DINOv2 pass (`shared`, `from_shared`), normals the depth
maps. Two outputs are raw only, waiting for a second network:
sam_instance_masks holds the sam_instance rows with their token columns -1 and each
instance's 64 x 64 mask (`tokenizers_vq.sam_instance.tokenize_records` fills the columns with a
converted SAM-instance tokenizer; the layout is `fourm.data.sam_instances`), human_keypoints people's boxes and COCO keypoints (4M-21's
human_poses needs HMR2.0's SMPL parameters, which fourm lacks). No ImageBind labeler
(`imagebind.py` says why).

torch and transformers (the optional `[pseudolabel]` extra) are imported only when a
labeler is built, so importing this package, or running `fourm --help`, does not need
them. This package knows nothing about tokens.
"""

from fourm import modalities as _modalities

# task name (as `fourm pseudolabel --tasks` takes it) -> the raw modality it writes: the
# registry says which task writes which raw modality (`RawSpec.labeler`).
TASK_MODALITIES = _modalities.labeler_outputs()

# The published checkpoints used by default (hub ids; a local directory works as well).
# Keys are tasks, or the network several tasks share: "sam" for sam_edge and
# sam_instance, "dinov2" for dinov2 and dinov2_global. human_keypoints (ViTPose) finds
# its people with the "det" detector.
DEFAULT_MODELS = {"depth": "Intel/dpt-hybrid-midas",
                  "semseg": "facebook/mask2former-swin-base-coco-panoptic",
                  "det": "facebook/detr-resnet-50",
                  "clip": "openai/clip-vit-base-patch16",
                  "sam": "facebook/sam-vit-huge",
                  "dinov2": "facebook/dinov2-base",
                  "human_keypoints": "usyd-community/vitpose-base-simple",
                  "t5_caption": "google/t5-v1_1-xxl"}
