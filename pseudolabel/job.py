"""`fourm pseudolabel`: run the labelers over a dataset, write their modalities beside it.

The output is a side-by-side store (`fourm/data/derived.py`): its own directory with the
source's splits, shards and record order, holding only the new modalities, read with
`RecordSource([data, labels])`. Finished shards are skipped when the job runs again, so
a killed job resumes. A labeler that fails on an image (after its batch failed, each
image is retried alone) leaves that image's modality absent; the image is logged with
its key and counted, the job goes on, and `dataset_info.json` lists the failures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fourm import modalities
from fourm.data import derived, records
from fourm.errors import RecordError, UsageError
from pseudolabel import DEFAULT_MODELS, TASK_MODALITIES, normals, torch_model

IMAGE = modalities.RGB.name  # what every labeler reads
TASK_ORDER = ("depth", "normals", "semseg", "det", "clip")  # normals reuse the depth maps


def parse_tasks(text: str) -> list[str]:
  tasks = [t.strip() for t in text.split(",") if t.strip()]
  unknown = [t for t in tasks if t not in TASK_MODALITIES]
  if unknown or not tasks:
    raise UsageError(f"--tasks: unknown task(s) {unknown or text!r}; choose from "
                     f"{','.join(TASK_ORDER)}")
  return [t for t in TASK_ORDER if t in tasks]


def build_labelers(tasks: Sequence[str], models: Mapping[str, str] | None = None, *,
                   device: str = "cpu", fov_deg: float = normals.DEFAULT_FOV_DEG
                   ) -> dict[str, Any]:
  """{task: labeler}; a model named `tiny-random` is the tiny random-init architecture."""
  from pseudolabel import clip_features, depth, detection, semseg
  classes = {"depth": depth.DepthLabeler, "semseg": semseg.SemsegLabeler,
             "det": detection.DetectionLabeler, "clip": clip_features.ClipLabeler}
  models = {**DEFAULT_MODELS, **{k: v for k, v in (models or {}).items() if v}}

  def build(task):
    name = models[task]
    return classes[task].tiny(device) if name == torch_model.TINY else \
        classes[task].from_pretrained(name, device=device)

  labelers = {task: build(task) for task in tasks if task != "normals"}
  if "normals" in tasks:
    source = labelers["depth"] if "depth" in labelers else build("depth")
    labelers["normals"] = normals.NormalsFromDepth(source, fov_deg)
  return labelers


def _run_isolated(labeler, images, name: str, errors: list[list[str]]) -> list:
  """The labeler on the batch; if the batch fails, on each image alone (None = failed)."""
  try:
    outputs = labeler(images)
    if len(outputs) != len(images):
      raise RuntimeError(f"returned {len(outputs)} outputs for {len(images)} images")
    return list(outputs)
  except Exception:  # noqa: BLE001 - a labeler may raise anything; we retry per image
    pass
  outputs = []
  for image, image_errors in zip(images, errors):
    try:
      outputs.append(labeler([image])[0])
    except Exception as error:  # noqa: BLE001
      image_errors.append(f"{name}: {type(error).__name__}: {error}")
      outputs.append(None)
  return outputs


def _normals_of(labeler, depth, image_errors: list[str]):
  if depth is None:
    return None  # the depth error is already logged
  try:
    return labeler.from_depth([depth])[0]
  except Exception as error:  # noqa: BLE001
    image_errors.append(f"normals: {type(error).__name__}: {error}")
    return None


def _checked(task: str, output, image, image_errors: list[str]):
  """The output if it is a valid record field aligned with the image (a NaN from a
  network is this image's failure, not the job's), else None."""
  try:
    records.validate_field(TASK_MODALITIES[task], output, image_hw=image.shape[:2])
  except RecordError as error:
    image_errors.append(f"{task}: {error}")
    return None
  return output


def label_batch(labelers: Mapping[str, Any], samples: Sequence[dict]
                ) -> list[dict | derived.Failure]:
  """One derived record per sample: every modality its labelers made for it."""
  images = [sample[IMAGE] for sample in samples]
  records_out: list[dict] = [{} for _ in samples]
  errors: list[list[str]] = [[] for _ in samples]
  results: dict[str, list] = {}
  for task in (t for t in TASK_ORDER if t in labelers):
    labeler = labelers[task]
    if task == "normals" and labeler.depth is labelers.get("depth"):
      # Same depth network: derive normals from the maps just made, where there are some.
      made = [_normals_of(labeler, d, e) for d, e in zip(results["depth"], errors)]
    else:
      made = _run_isolated(labeler, images, task, errors)
    made = [None if output is None else _checked(task, output, image, image_errors)
            for output, image, image_errors in zip(made, images, errors)]
    results[task] = made
    for record, output in zip(records_out, made):
      if output is not None:
        record[TASK_MODALITIES[task]] = output
  return [derived.Failure(record, "; ".join(e)) if e else record
          for record, e in zip(records_out, errors)]


def camera_fov(data: str) -> float:
  """The source's field of view if it records one (the synthetic world does), else the
  default for photos."""
  camera = records.DatasetInfo.load(data).metadata.get("camera") or {}
  return float(camera.get("fov_deg", normals.DEFAULT_FOV_DEG))


def pseudolabel_dataset(data: str, out: str, labelers: Mapping[str, Any], *,
                        batch_size: int = 8, progress: bool = True,
                        log: Callable[[str], None] = print) -> records.DatasetInfo:
  """Labels every record's rgb with each labeler and writes the modalities to `out`."""
  if not labelers:
    raise UsageError("no pseudo-labelling task given")
  if batch_size < 1:
    raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
  info = records.DatasetInfo.load(data)
  if IMAGE not in info.modalities:
    raise UsageError(f"{data} has no {IMAGE} images to label (it has {sorted(info.modalities)})")
  models = {task: labeler.name for task, labeler in labelers.items()}
  metadata: dict[str, Any] = {"created_by": "fourm pseudolabel", "models": models}
  if "semseg" in labelers:
    metadata["classes"] = labelers["semseg"].class_names
  if "depth" in labelers:
    metadata[TASK_MODALITIES["depth"]] = ("metric depth in metres" if labelers["depth"].metric else
                         "relative depth, median 1 per image (from relative inverse depth)")
  if "normals" in labelers:
    metadata[TASK_MODALITIES["normals"]] = (
        f"unit vectors, camera frame x right, y down, z forward, facing the camera; "
        f"{labelers['normals'].name}")
  if any(getattr(labeler, "depth", labeler).name == torch_model.TINY
         for labeler in labelers.values()):
    metadata["warning"] = "made by tiny random-init networks: these labels are meaningless"
  job = {"method": "pseudolabel", "tasks": sorted(labelers), "models": models}
  key = modalities.KEY.name
  keep = [IMAGE] + ([key] if key in info.modalities else [])
  return derived.write_derived(
      data, out, lambda samples: label_batch(labelers, samples), job=job,
      name="pseudo_labels", modalities=keep, batch_size=batch_size, metadata=metadata,
      progress=progress, log=log, tolerate_failures=True)
