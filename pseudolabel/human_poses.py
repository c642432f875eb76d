"""People: person boxes from a detector and 2D keypoints from ViTPose. Not 4M-21's poses.

4M-21's human_poses record (tokenizers_vq/human_poses.py) holds, per person, a box and
the SMPL body model's parameters as 4D-Humans' HMR2.0 estimates them (apple/ml-4m
README_DATA.md): the global orientation (a 3x3 rotation), the body pose as 8 token ids
of the reference's pose VQ-VAE (EPFL-VILAB/4M_tokenizers_human-poses_1k_8, which
compresses HMR2.0's 23 joint rotations, 207 numbers), 10 shape betas and a
weak-perspective camera. transformers has no HMR2.0 (nor any SMPL regressor) and fourm
has no pose tokenizer, so none of columns 4:34 can be written honestly; a human_poses
record made here would be a fake.

What can be made honestly is what HMR2.0's pipeline starts from, plus what a maintained
keypoint model adds: `HumanKeypointsLabeler` writes float32 [N, 5 + 3*17], one row per
person, best first:

    0:4    the person's box (xmin, ymin, xmax, ymax) in [0, 1] of the image: the same
           columns and meaning as human_poses' box (columns 0:4 there)
    4      the detector's person score
    5:56   the 17 COCO keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips,
           knees, ankles) as (x, y, score): x, y in [0, 1] of the image (a joint the
           padded crop reaches past the image may fall slightly outside), score the
           ViTPose heatmap's peak

Its raw modality is "human_keypoints" (fourm/modalities.py: raw only). Boxes
come from a DETR-family detector (`detection.DetectionLabeler`: the checkpoint's
"person" class at probability >= 0.5, the threshold 4D-Humans applies to its ViTDet
boxes, which are what HMR2.0 reads); keypoints from ViTPose top-down on each box
(transformers' VitPose processor: the box widened to the model's 3:4 aspect and padded
by 1.25, an affine crop, DARK heatmap decoding).
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import numpy as np

from pseudolabel import DEFAULT_MODELS, detection, tiny_4m21, torch_model
from pseudolabel.detection import DetectionLabeler

DEFAULT_POSE_MODEL = DEFAULT_MODELS["human_keypoints"]      # ViTPose-B, COCO keypoints
DEFAULT_DETECTOR = detection.DEFAULT_MODEL                   # facebook/detr-resnet-50
PERSON_CLASS = "person"
PERSON_THRESHOLD = 0.5
KEYPOINTS = 17
WIDTH = 5 + 3 * KEYPOINTS


class HumanKeypointsLabeler:
  """images -> float32 [N, 56] each: person boxes, scores and 17 keypoints (see above)."""

  def __init__(self, detector: DetectionLabeler, pose_model, processor, *,
               person_class: str = PERSON_CLASS, threshold: float = PERSON_THRESHOLD,
               name: str | None = None):
    torch, _ = torch_model.import_torch()
    self.torch = torch
    self.detector, self.processor = detector, processor
    self.device = detector.device
    self.pose_model = pose_model.to(self.device).eval()
    self.person_ids = [i for i, c in enumerate(detector.class_names) if c == person_class]
    if not self.person_ids:
      raise ValueError(f"human keypoints: the detector {detector.name!r} has no class "
                       f"{person_class!r}")
    self.threshold = threshold
    self.name = name or f"{detector.name} + {getattr(pose_model, 'name_or_path', 'vitpose')}"

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_POSE_MODEL, device: str = "cpu",
                      detector: str = DEFAULT_DETECTOR, person_class: str = PERSON_CLASS,
                      threshold: float = PERSON_THRESHOLD) -> HumanKeypointsLabeler:
    _, transformers = torch_model.import_torch()
    pose_model = torch_model.load_model("human_keypoints", transformers.VitPoseForPoseEstimation,
                                        name_or_path)
    processor = torch_model.load_model("human_keypoints", transformers.AutoImageProcessor,
                                       name_or_path)
    return cls(DetectionLabeler.from_pretrained(detector, device=device), pose_model, processor,
               person_class=person_class, threshold=threshold,
               name=f"{detector} + {name_or_path}")

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny") -> HumanKeypointsLabeler:
    """Tiny DETR (COCO's label map: "person" is "coco_id_1" there) and tiny ViTPose.
    Random weights score no one a person: every query counts as one (threshold 0)."""
    _, transformers = torch_model.import_torch()
    processor = transformers.VitPoseImageProcessorPil(size=tiny_4m21.vitpose_input_size(size))
    pose_model = transformers.VitPoseForPoseEstimation(tiny_4m21.vitpose_config(size))
    return cls(DetectionLabeler.tiny(device, size), pose_model, processor,
               person_class="coco_id_1", threshold=0.0, name=torch_model.TINY)

  def people(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes float32 [N, 4] xyxy in [0, 1], scores float32 [N]) per image, best first;
    boxes under a pixel wide or tall are dropped."""
    detector, torch = self.detector, self.torch
    with torch.inference_mode():
      out = detector.model(pixel_values=detector.pixels(images))
      probs = out.logits.softmax(-1)[..., :-1] if detector.softmax else out.logits.sigmoid()
      scores = probs[..., self.person_ids].amax(-1).float().cpu().numpy()
      cxcywh = out.pred_boxes.float().cpu().numpy().astype(np.float64)
    found = []
    for image, s, b in zip(images, scores, cxcywh):
      height, width = image.shape[:2]
      cx, cy, w, h = b.T
      boxes = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1), 0, 1)
      big = ((boxes[:, 2] - boxes[:, 0]) * width >= 1) & ((boxes[:, 3] - boxes[:, 1]) * height >= 1)
      keep = np.flatnonzero((s >= self.threshold) & big)
      keep = keep[np.argsort(-s[keep], kind="stable")]
      found.append((boxes[keep].astype(np.float32), s[keep].astype(np.float32)))
    return found

  def keypoints(self, images: Sequence[np.ndarray],
                boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """float32 [N, 17, 3] (x, y in [0, 1] of the image, score) for each image's boxes."""
    torch = self.torch
    out = [np.zeros((len(b), KEYPOINTS, 3), np.float32) for b in boxes]
    todo = [i for i, b in enumerate(boxes) if len(b)]
    if not todo:
      return out
    # The processor takes COCO boxes (x, y, w, h) in pixel-index coordinates (pixel i's
    # centre at i) and returns keypoints in the same.
    coco = []
    for i in todo:
      height, width = images[i].shape[:2]
      scale = np.array([width, height, width, height], np.float64)
      xyxy = boxes[i].astype(np.float64) * scale
      coco.append([[x0 - 0.5, y0 - 0.5, x1 - x0, y1 - y0] for x0, y0, x1, y1 in xyxy.tolist()])
    inputs = self.processor(images=[images[i] for i in todo], boxes=coco, return_tensors="pt")
    pixels = inputs.pixel_values.to(self.device)
    extra = {}
    if getattr(self.pose_model.config.backbone_config, "num_experts", 1) > 1:
      extra["dataset_index"] = torch.zeros(len(pixels), dtype=torch.long, device=self.device)
    with torch.inference_mode():
      heatmaps = self.pose_model(pixel_values=pixels, **extra).heatmaps.float().cpu()
    results = self.processor.post_process_pose_estimation(
        types.SimpleNamespace(heatmaps=heatmaps), boxes=coco)
    for i, people in zip(todo, results):
      height, width = images[i].shape[:2]
      for n, person in enumerate(people):
        xy = person["keypoints"].numpy().astype(np.float64)
        out[i][n, :, 0] = (xy[:, 0] + 0.5) / width
        out[i][n, :, 1] = (xy[:, 1] + 0.5) / height
        out[i][n, :, 2] = person["scores"].numpy()
    return out

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    people = self.people(images)
    keypoints = self.keypoints(images, [boxes for boxes, _ in people])
    return [np.concatenate([boxes, scores[:, None], k.reshape(len(k), 3 * KEYPOINTS)], 1)
            .astype(np.float32) for (boxes, scores), k in zip(people, keypoints)]
