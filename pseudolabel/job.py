"""`fourm pseudolabel`: run the labelers over a dataset, write their modalities beside it.

The output is a side-by-side store (`fourm/data/derived.py`): its own directory with the
source's splits, shards and record order, holding only the new modalities, read with
`RecordSource([data, labels])`. Finished shards are skipped when the job runs again, so
a killed job resumes. A labeler that fails on an image (after its batch failed, each
image is retried alone) leaves that image's modality absent; the image is logged with
its key and counted, the job goes on, and `dataset_info.json` lists the failures.

Most labelers read the image only. One that reads other modalities too (metadata counts
objects, measures captions) says which in `reads` and has `label_records(samples)`: it
gets each record as the source holds it (with any `beside` stores of the same records,
e.g. an earlier run's pseudo-labels), overlaid with what the tasks before it made in
this run. `TASK_ORDER` runs such a task after those it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fourm import modalities
from fourm.data import derived, records
from fourm.errors import RecordError, UsageError
from pseudolabel import DEFAULT_MODELS, TASK_MODALITIES, canny, normals, palette, torch_model
from pseudolabel import metadata as metadata_labeler

IMAGE = modalities.RGB.name  # what every labeler reads
# The order tasks run in: normals reuse the depth maps; metadata reads what every task
# before it made, so it comes last.
TASK_ORDER = ("depth", "normals", "semseg", "det", "clip", "canny_edge", "color_palette",
              "metadata")
# Tasks computed by a library, without a network (--tiny changes nothing for them).
LIBRARY_LABELERS = {"canny_edge": canny.CannyLabeler, "color_palette": palette.PaletteLabeler,
                    "metadata": metadata_labeler.MetadataLabeler}
# What their values mean, for the dataset's info (as for depth and normals).
LIBRARY_DESCRIPTIONS = {
    "canny_edge": "1 on a Canny edge of the image's luma, else 0",
    "color_palette": "k-means colors of the image, most pixels first, 1..7 drawn per image",
    "metadata": ("float32 [21] in METADATA_KEYS order, NaN where absent: n_sam_instances, "
                 "watermark_score and aesthetic_score always (no SAM count, no LAION "
                 "networks); counts and semantic shares where the record has caption, "
                 "det / human_poses, semseg, normal, depth"),
}


def parse_tasks(text: str) -> list[str]:
  tasks = [t.strip() for t in text.split(",") if t.strip()]
  unknown = [t for t in tasks if t not in TASK_MODALITIES or t not in TASK_ORDER]
  if unknown or not tasks:
    raise UsageError(f"--tasks: unknown task(s) {unknown or text!r}; choose from "
                     f"{','.join(TASK_ORDER)}")
  return [t for t in TASK_ORDER if t in tasks]


def build_labelers(tasks: Sequence[str], models: Mapping[str, str] | None = None, *,
                   device: str = "cpu", fov_deg: float = normals.DEFAULT_FOV_DEG
                   ) -> dict[str, Any]:
  """{task: labeler}; a model named `tiny-random` is the tiny random-init architecture.
  The library tasks (`LIBRARY_LABELERS`) take no model."""
  models = {**DEFAULT_MODELS, **{k: v for k, v in (models or {}).items() if v}}

  def build(task):
    if task in LIBRARY_LABELERS:
      return LIBRARY_LABELERS[task]()
    from pseudolabel import clip_features, depth, detection, semseg
    classes = {"depth": depth.DepthLabeler, "semseg": semseg.SemsegLabeler,
               "det": detection.DetectionLabeler, "clip": clip_features.ClipLabeler}
    name = models[task]
    return classes[task].tiny(device) if name == torch_model.TINY else \
        classes[task].from_pretrained(name, device=device)

  labelers = {task: build(task) for task in tasks if task != "normals"}
  if "normals" in tasks:
    source = labelers["depth"] if "depth" in labelers else build("depth")
    labelers["normals"] = normals.NormalsFromDepth(source, fov_deg)
  return labelers


def _run_isolated(labeler, inputs, name: str, errors: list[list[str]]) -> list:
  """The labeler on the batch (of images, or of records for a labeler that reads them);
  if the batch fails, on each input alone (None = failed)."""
  try:
    outputs = labeler(inputs)
    if len(outputs) != len(inputs):
      raise RuntimeError(f"returned {len(outputs)} outputs for {len(inputs)} inputs")
    return list(outputs)
  except Exception:  # noqa: BLE001 - a labeler may raise anything; we retry per image
    pass
  outputs = []
  for one, image_errors in zip(inputs, errors):
    try:
      outputs.append(labeler([one])[0])
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
    elif getattr(labeler, "reads", None):
      # The record as read, overlaid with what this run made for it so far.
      inputs = [{**sample, **made_here} for sample, made_here in zip(samples, records_out)]
      made = _run_isolated(labeler.label_records, inputs, task, errors)
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
                        beside: Sequence[str] = (), batch_size: int = 8,
                        progress: bool = True, log: Callable[[str], None] = print
                        ) -> records.DatasetInfo:
  """Labels every record's rgb with each labeler and writes the modalities to `out`.

  `beside`: side-by-side stores of `data` (an earlier run's pseudo-labels, ...) whose
  modalities the labelers that read records (`reads`) see as well."""
  if not labelers:
    raise UsageError("no pseudo-labelling task given")
  if batch_size < 1:
    raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
  info = records.DatasetInfo.load(data)
  if IMAGE not in info.modalities:
    raise UsageError(f"{data} has no {IMAGE} images to label (it has {sorted(info.modalities)})")
  infos = [info] + [records.DatasetInfo.load(d) for d in beside]
  _resolve_classes(labelers, infos)
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
  for task, what in LIBRARY_DESCRIPTIONS.items():
    if task in labelers:
      metadata[TASK_MODALITIES[task]] = what
  if any(getattr(labeler, "depth", labeler).name == torch_model.TINY
         for labeler in labelers.values()):
    metadata["warning"] = "made by tiny random-init networks: these labels are meaningless"
  job = {"method": "pseudolabel", "tasks": sorted(labelers), "models": models}
  key = modalities.KEY.name
  keep = [IMAGE] + ([key] if key in info.modalities else [])
  if any(getattr(labeler, "reads", None) for labeler in labelers.values()):
    keep = None  # the whole record: what it lacks, the labeler does without
  return derived.write_derived(
      data, out, lambda samples: label_batch(labelers, samples), job=job,
      name="pseudo_labels", modalities=keep, beside=beside, batch_size=batch_size,
      metadata=metadata, progress=progress, log=log, tolerate_failures=True)


def _resolve_classes(labelers: Mapping[str, Any], infos: Sequence[records.DatasetInfo]
                     ) -> None:
  """Tells a labeler that reads semseg the class names of the semseg it will see: this
  run's segmenter's, else those of the store that holds semseg."""
  for labeler in labelers.values():
    if "semseg" not in (getattr(labeler, "reads", None) or ()) or \
        getattr(labeler, "semseg_classes", None) is not None:
      continue
    if "semseg" in labelers:
      labeler.semseg_classes = list(labelers["semseg"].class_names)
      continue
    store = next((i for i in infos if "semseg" in i.modalities), None)
    if store is not None and "classes" in store.metadata:
      labeler.semseg_classes = list(store.metadata["classes"])
      if "thing_classes" in store.metadata and getattr(labeler, "thing_classes", None) is None:
        labeler.thing_classes = frozenset(store.metadata["thing_classes"])
