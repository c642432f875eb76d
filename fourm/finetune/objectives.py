"""Each task's training loss on a batch (`TaskTargets`' fields), as one function the
fine-tune step differentiates: `task_loss(task, loss_config)(outputs, batch)`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import ml_collections

from fourm.finetune import dense_heads
from fourm.finetune.set_loss import SetLossWeights, set_loss
from fourm.finetune.matching import MatchCosts


def task_loss(task: str, loss: ml_collections.ConfigDict, *, ignore_index: int = 255
              ) -> Callable[[object, Mapping[str, jax.Array]], tuple[jax.Array, dict]]:
  """(outputs, batch) -> (loss, metrics) for `task`."""
  if task == "classification":
    def classification(logits, batch):
      value = dense_heads.classification_loss(logits, batch["label"], loss.label_smoothing)
      accuracy = (logits.argmax(-1) == batch["label"]).mean()
      return value, {"accuracy": accuracy}
    return classification
  if task == "segmentation":
    def segmentation(logits, batch):
      return dense_heads.segmentation_loss(logits, batch["label"],
                                           ignore_index=ignore_index), {}
    return segmentation
  if task == "depth":
    def depth(predicted, batch):
      return dense_heads.scale_invariant_log_loss(
          predicted, batch["depth"], batch["depth_valid"],
          variance_focus=loss.variance_focus), {}
    return depth
  weights = SetLossWeights(class_weight=loss.class_weight, l1_weight=loss.l1_weight,
                           giou_weight=loss.giou_weight, no_object_weight=loss.eos_coef)
  # The matcher weighs classes, L1 and GIoU as the loss does (DETR sets both alike).
  costs = MatchCosts(class_weight=loss.class_weight, l1_weight=loss.l1_weight,
                     giou_weight=loss.giou_weight)

  def detection(outputs, batch):
    terms = set_loss(outputs.logits, outputs.boxes, batch["box_classes"], batch["boxes"],
                     batch["box_valid"], weights=weights, costs=costs,
                     aux_outputs=outputs.auxiliary if loss.auxiliary else ())
    total = terms.pop("total")
    return total, {f"loss/{name}": value for name, value in terms.items()}
  return detection
