"""Tiny, randomly initialized configurations of the real architectures.

Same model classes, same code paths as the published checkpoints (a DPT-Hybrid with a
BiT backbone, Mask2Former with a Swin backbone and COCO panoptic's 133 classes, DETR
with a ResNet backbone and COCO's label map, a CLIP ViT with 16 px patches), only a few
channels wide, so tests and the CPU benchmark run in seconds without any download.
Their weights are random: the labels they make are meaningless.

`size="real"` gives the published sizes, still randomly initialized (for timing on a
GPU machine without the weights).
"""

from __future__ import annotations

from typing import Any

COCO_PANOPTIC_CLASSES = 133   # 80 things + 53 stuff
COCO_DETECTION_IDS = 91       # DETR's label map: COCO category ids, some unused


def _labels(count: int, prefix: str) -> dict[int, str]:
  return {i: f"{prefix}{i}" for i in range(count)}


def depth_config(size: str = "tiny"):
  from transformers import DPTConfig
  if size == "real":  # Intel/dpt-hybrid-midas
    return DPTConfig(is_hybrid=True, image_size=384, backbone_out_indices=[2, 5, 8, 11],
                     neck_hidden_sizes=[256, 512, 768, 768], readout_type="project",
                     reassemble_factors=[1, 1, 1, 0.5], backbone_featmap_shape=[1, 1024, 24, 24],
                     backbone_config=_bit(depths=[3, 4, 9], hidden_sizes=[256, 512, 1024],
                                          embedding_size=64, num_groups=32))
  return DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                   intermediate_size=64, image_size=64, patch_size=16, is_hybrid=True,
                   backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 32, 32],
                   fusion_hidden_size=16, readout_type="project",
                   reassemble_factors=[1, 1, 1, 0.5], backbone_featmap_shape=[1, 64, 4, 4],
                   backbone_config=_bit(depths=[1, 1, 1], hidden_sizes=[16, 32, 64],
                                        embedding_size=8, num_groups=4))


def _bit(**sizes) -> dict[str, Any]:
  return {"model_type": "bit", "global_padding": "same", "layer_type": "bottleneck",
          "out_features": ["stage1", "stage2", "stage3"], "embedding_dynamic_padding": True,
          **sizes}


def semseg_config(size: str = "tiny"):
  from transformers import Mask2FormerConfig
  labels = _labels(COCO_PANOPTIC_CLASSES, "coco_class_")
  stages = ["stage1", "stage2", "stage3", "stage4"]
  if size == "real":  # facebook/mask2former-swin-base-coco-panoptic
    return Mask2FormerConfig(
        backbone_config={"model_type": "swin", "embed_dim": 128, "depths": [2, 2, 18, 2],
                         "num_heads": [4, 8, 16, 32], "window_size": 12, "image_size": 384,
                         "out_features": stages},
        use_pretrained_backbone=False, num_labels=len(labels), id2label=labels)
  return Mask2FormerConfig(
      backbone_config={"model_type": "swin", "embed_dim": 16, "depths": [1, 1, 1, 1],
                       "num_heads": [1, 1, 2, 2], "window_size": 4, "image_size": 64,
                       "out_features": stages},
      hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_feedforward_dim=64,
      dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
      num_queries=10, use_pretrained_backbone=False, num_labels=len(labels), id2label=labels)


def det_config(size: str = "tiny"):
  from transformers import DetrConfig
  labels = _labels(COCO_DETECTION_IDS, "coco_id_")
  if size == "real":  # facebook/detr-resnet-50
    return DetrConfig(use_pretrained_backbone=False, num_labels=len(labels), id2label=labels,
                      backbone_config={"model_type": "resnet", "out_features": ["stage4"]})
  return DetrConfig(
      use_pretrained_backbone=False, num_labels=len(labels), id2label=labels,
      backbone_config={"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 32, 64],
                       "depths": [1, 1, 1, 1], "layer_type": "basic", "out_features": ["stage4"]},
      d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10)


def clip_config(size: str = "tiny"):
  from transformers import CLIPVisionConfig
  if size == "real":  # openai/clip-vit-base-patch16
    return CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, image_size=224, patch_size=16)
  return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, image_size=64, patch_size=16)
