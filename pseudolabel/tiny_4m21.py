"""Tiny, randomly initialized configurations of the 4M-21 labelers' architectures.

As `pseudolabel/tiny.py` does for the 4M-7 labelers: the same model classes and code
paths as the published checkpoints (SAM, DINOv2, ViTPose, the T5 v1.1 encoder), only a
few layers deep, so tests run in seconds without a download. Their weights are random:
the labels they make are meaningless.

Where a record's layout fixes a width, the tiny model keeps it, so tiny outputs have the
records' exact shapes with no projection: DINOv2 keeps its 768 channels (one layer,
narrow MLP), the T5 encoder its 4096 (one layer, two 8-wide heads, a tiny vocabulary),
ViTPose its 17 COCO keypoints. SAM's widths appear in no record and are tiny.

`size="real"` gives the published sizes, still randomly initialized (for timing on a GPU
machine without the weights).
"""

from __future__ import annotations

import string

COCO_KEYPOINTS = 17
T5_WIDTH = 4096        # T5 v1.1 XXL's d_model: the t5_caption record's channels
DINOV2_WIDTH = 768     # DINOv2 ViT-B/14: the dinov2 records' channels

# Word pieces of the tiny T5 tokenizer (a Unigram model like T5's SentencePiece one):
# every ASCII letter, digit and some punctuation alone, so plain-ASCII captions tokenize
# without <unk>, plus a few whole words so pieces vary in length.
_T5_WORDS = ("▁a", "▁the", "▁of", "▁on", "▁in", "▁with", "▁and", "▁man", "▁cat", "▁dog",
             "▁red", "▁photo", "▁sitting", "▁table", "ing", "ed", "er", "s")


def sam_config(size: str = "tiny"):
  from transformers import SamConfig
  if size == "real":  # facebook/sam-vit-huge
    return SamConfig(vision_config={"hidden_size": 1280, "num_hidden_layers": 32,
                                    "num_attention_heads": 16, "mlp_dim": 5120,
                                    "global_attn_indexes": [7, 15, 23, 31]})
  return SamConfig(
      vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "mlp_dim": 64, "output_channels": 32, "image_size": 64, "patch_size": 16,
                     "window_size": 2, "global_attn_indexes": [1], "num_pos_feats": 16},
      prompt_encoder_config={"hidden_size": 32, "image_size": 64, "patch_size": 16,
                             "mask_input_channels": 4},
      mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "iou_head_hidden_dim": 32})


def dinov2_config(size: str = "tiny"):
  from transformers import Dinov2Config
  if size == "real":  # facebook/dinov2-base
    return Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        image_size=518, patch_size=14, layerscale_value=1.0)
  # A 7 x 7 position table read at a smaller grid: interpolated, as the real 37 x 37
  # table is at 224 px.
  return Dinov2Config(hidden_size=DINOV2_WIDTH, num_hidden_layers=1, num_attention_heads=12,
                      mlp_ratio=1, image_size=98, patch_size=14)


def vitpose_config(size: str = "tiny"):
  from transformers import VitPoseConfig
  if size == "real":  # usyd-community/vitpose-base-simple
    backbone = {"model_type": "vitpose_backbone", "out_indices": [12]}
    return VitPoseConfig(backbone_config=backbone, num_labels=COCO_KEYPOINTS)
  backbone = {"model_type": "vitpose_backbone", "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "mlp_ratio": 2, "image_size": [64, 48],
              "patch_size": [16, 16], "out_indices": [2]}
  return VitPoseConfig(backbone_config=backbone, num_labels=COCO_KEYPOINTS)


def vitpose_input_size(size: str = "tiny") -> dict[str, int]:
  return {"height": 256, "width": 192} if size == "real" else {"height": 64, "width": 48}


def t5_tokenizer():
  """A T5 tokenizer (the real class: Unigram pieces, `</s>` appended) with a tiny vocabulary."""
  from transformers import T5Tokenizer
  pieces = ["<pad>", "</s>", "<unk>", "▁"]
  pieces += list(string.ascii_letters + string.digits + ".,'-!?")
  pieces += list(_T5_WORDS)
  # Longer pieces score higher, so whole words win over their letters.
  vocab = [(p, 0.0 if i < 3 else -10.0 + len(p)) for i, p in enumerate(pieces)]
  return T5Tokenizer(vocab=vocab, extra_ids=0)


def t5_config(size: str = "tiny", vocab_size: int | None = None):
  from transformers import T5Config
  if size == "real":  # google/t5-v1_1-xxl (the encoder half)
    return T5Config(vocab_size=32128, d_model=T5_WIDTH, d_kv=64, d_ff=10240, num_layers=24,
                    num_heads=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                    use_cache=False)
  return T5Config(vocab_size=vocab_size or 128, d_model=T5_WIDTH, d_kv=8, d_ff=16, num_layers=1,
                  num_heads=2, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                  use_cache=False)
