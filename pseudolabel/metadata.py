"""4M-21's `metadata`: image statistics, and counts read from the record's other modalities.

The measures are `fourm/data/measures.py`'s (the synthetic world uses the same). Which
modality each kind comes from, and which stay NaN (absent):

| kinds | from |
| --- | --- |
| original_width / _height, brightness, contrast, saturation, colorfulness, entropy | the image |
| caption_n_chars / _words / _sentences | `caption` |
| n_humans | the rows of `human_poses`, else of `human_keypoints`; else `det`'s "person" boxes |
| n_coco_instances, coco_instance_diversity | `det`: its boxes, its distinct classes |
| walkability, objectness, semantic_diversity | `semseg`, and its class names |
| geometric_complexity | `normal` |
| occlusion_score | `depth` |
| n_sam_instances | `SAM_COUNT`: SAM's masks, when the same run made them (see below); else NaN |
| watermark_score, aesthetic_score | NaN: they need LAION's watermark / aesthetic networks |

A kind whose modality the record lacks is NaN. walkability and objectness need to know
which classes are walkable or things, by name: a class is walkable if its name's first
word is in `WALKABLE` ("floor-wood" -> "floor"), a thing if its name is in
`COCO_THINGS` (or in `thing_classes`, given); with class names none of which are known
(a tiny random network's "coco_class_7") they are NaN.

The labeler declares what it reads (`reads`); `fourm pseudolabel` hands it each record
with the source's modalities, those of `--beside` stores, and what the tasks before it
made in the same run (`label_records`), plus `SAM_COUNT` where that run made SAM's
automatic masks (sam_edge, sam_instance): their number. No stored modality holds it (a
`sam_instance` record lists only the instances at its query points), so a later run
reading SAM's outputs `--beside` cannot count them. Called on bare images it measures
the image only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fourm.data import measures

# The 80 countable COCO categories, as COCO panoptic / detection label maps name them.
COCO_THINGS = frozenset((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"))
# Ground one can walk on: COCO panoptic's stuff of that kind (floor-wood, pavement-merged,
# ...) by its first word, and the same words of other label sets (ADE20K's sidewalk, ...).
WALKABLE = frozenset((
    "floor", "road", "pavement", "sidewalk", "path", "grass", "dirt", "sand", "gravel", "snow",
    "playingfield", "field", "railroad", "platform", "stairs", "rug", "carpet", "ground",
    "earth"))
PERSON = "person"
# The number of SAM automatic masks of the image, which `fourm pseudolabel` adds to the
# record it hands over when the same run made them (no modality stores it).
SAM_COUNT = "n_sam_instances"


def _first_word(name: str) -> str:
  return name.lower().replace("_", "-").split("-")[0].strip()


class MetadataLabeler:
  """records -> metadata float32 [21] each (`fourm.modalities.METADATA_KEYS` order)."""

  # The raw modalities it reads when a record has them (besides rgb).
  reads = ("caption", "semseg", "det", "normal", "depth", "human_poses", "human_keypoints")
  name = ("image statistics; counts from caption, human_poses / human_keypoints, det, semseg, "
          "normal, depth, this run's SAM masks; no watermark or aesthetic scores")

  def __init__(self, semseg_classes: Sequence[str] | None = None,
               thing_classes: Iterable[str] | None = None):
    self.semseg_classes = list(semseg_classes) if semseg_classes is not None else None
    self.thing_classes = frozenset(thing_classes) if thing_classes is not None else None

  @classmethod
  def tiny(cls, device: str = "cpu") -> MetadataLabeler:
    del device  # runs on the CPU
    return cls()

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return self.label_records([{"rgb": image} for image in images])

  def label_records(self, samples: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    return [measures.metadata_vector(self.measure(sample)) for sample in samples]

  def measure(self, sample: Mapping[str, Any]) -> dict[str, float]:
    """{kind: value} of every kind this sample's modalities give."""
    values = measures.image_statistics(sample["rgb"])
    if isinstance(sample.get("caption"), str):
      values.update(measures.caption_counts(sample["caption"]))
    det = sample.get("det")
    if det is not None:
      classes = list(det["classes"])
      values["n_coco_instances"] = float(len(classes))
      values["coco_instance_diversity"] = float(len(set(classes)))
      values["n_humans"] = float(classes.count(PERSON))
    for people in ("human_keypoints", "human_poses"):  # human_poses wins: a row a person
      if sample.get(people) is not None:
        values["n_humans"] = float(len(np.asarray(sample[people])))
    if sample.get(SAM_COUNT) is not None:
      values["n_sam_instances"] = float(sample[SAM_COUNT])
    if sample.get("semseg") is not None:
      values.update(self._semantic(np.asarray(sample["semseg"])))
    if sample.get("normal") is not None:
      values["geometric_complexity"] = measures.geometric_complexity(sample["normal"])
    if sample.get("depth") is not None:
      values["occlusion_score"] = measures.occlusion_score(sample["depth"])
    return values

  def _semantic(self, semseg: np.ndarray) -> dict[str, float]:
    values = {"semantic_diversity": measures.semantic_diversity(semseg)}
    if self.semseg_classes is None:
      return values
    names = self.semseg_classes
    things = [i for i, n in enumerate(names)
              if (n in self.thing_classes if self.thing_classes is not None
                  else n.lower() in COCO_THINGS)]
    walkable = [i for i, n in enumerate(names) if _first_word(n) in WALKABLE]
    if things:
      values["objectness"] = measures.class_share(semseg, things)
    if walkable:
      values["walkability"] = measures.class_share(semseg, walkable)
    return values
