"""`fourm pseudolabel`: run the labelers over a dataset, write their modalities beside it.

The output is a side-by-side store (`fourm/data/derived.py`): its own directory with the
source's splits, shards and record order, holding only the new modalities, read with
`RecordSource([data, labels])`. Finished shards are skipped when the job runs again, so
a killed job resumes. A labeler that fails on an image (after its batch failed, each
image is retried alone) leaves that image's modality absent; the image is logged with
its key and counted, the job goes on, and `dataset_info.json` lists the failures.

Most labelers read the image only. One that reads other modalities too (metadata counts
objects, measures captions; t5_caption embeds the caption) says which in `reads` and has
`label_records(samples)`: it gets each record as the source holds it (with any `beside`
stores of the same records, e.g. an earlier run's pseudo-labels), overlaid with what the
tasks before it made in this run. `TASK_ORDER` runs such a task after those it reads.
Such a labeler returns None for a record it has nothing to label from (t5_caption for a
record without a caption): that record gets no such modality, and it is no failure. A
failure is an exception (or an invalid output), and only failures are counted.

Tasks that read one network share it: a labeler whose output derives from a network
other tasks read too has `shared` (that network's step, images -> one output each) and
`from_shared(outputs, images)`. The job runs each shared step once per batch, for all
the tasks that share it (sam_edge and sam_instance: SAM's automatic masks; dinov2 and
dinov2_global: DINOv2's features); if it fails on an image, the failure is logged once,
under all their names. normals reuse the depth maps the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fourm import modalities
from fourm.data import derived, records
from fourm.errors import RecordError, UsageError
from pseudolabel import DEFAULT_MODELS, TASK_MODALITIES, canny, normals, palette, sam, torch_model
from pseudolabel import metadata as metadata_labeler

IMAGE = modalities.RGB.name  # what every labeler reads
# The order tasks run in: normals reuse the depth maps; metadata reads what every task
# before it made (boxes, people, ...), so it comes last.
TASK_ORDER = ("depth", "normals", "semseg", "det", "clip", "sam_edge", "sam_instance",
              "dinov2", "dinov2_global", "human_keypoints", "t5_caption", "canny_edge",
              "color_palette", "metadata")
# Tasks made from a network another task reads too: task -> that network's DEFAULT_MODELS
# key. One instance of it serves them all, run once per batch.
SHARED_NETWORKS = {"normals": "depth", "sam_edge": "sam", "sam_instance": "sam",
                   "dinov2": "dinov2", "dinov2_global": "dinov2"}
# Tasks computed by a library, without a network (--tiny changes nothing for them).
LIBRARY_LABELERS = {"canny_edge": canny.CannyLabeler, "color_palette": palette.PaletteLabeler,
                    "metadata": metadata_labeler.MetadataLabeler}
# What their values mean, for the dataset's info (as for depth and normals; dinov2 adds
# its input size).
DESCRIPTIONS = {
    "sam_edge": "1 on the boundary of any of SAM's automatic masks, else 0",
    "sam_instance": ("int32 [R, 22 + 64*64]: sam_instance rows (a query point, the box of an "
                     "instance containing it, in px of the 224 px center square; 16 token "
                     "columns -1: untokenized, no SAM-instance tokenizer yet), each followed "
                     "by that instance's 64 x 64 mask in its box (all 0 on a point's "
                     "no-instance row)"),
    "dinov2": "DINOv2's last-layer patch tokens after its final LayerNorm",
    "dinov2_global": "DINOv2's class token after its final LayerNorm",
    "human_keypoints": ("float32 [N, 56] a row a person, best first: box (xmin, ymin, xmax, "
                        "ymax in [0, 1]), the detector's person score, 17 COCO keypoints "
                        "(x, y in [0, 1], score); not human_poses: no SMPL body model"),
    "t5_caption": ("the T5 encoder's last hidden states of the record's caption, one per "
                   "token, </s> included, at most 77; records without a caption have none"),
    "canny_edge": "1 on a Canny edge of the image's luma, else 0",
    "color_palette": "k-means colors of the image, most pixels first, 1..7 drawn per image",
    "metadata": ("float32 [21] in METADATA_KEYS order, NaN where absent: watermark_score and "
                 "aesthetic_score always (no LAION networks); n_sam_instances where this "
                 "run made SAM masks; counts and semantic shares where the record has "
                 "caption, det / human_poses / human_keypoints, semseg, normal, depth"),
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
  The library tasks (`LIBRARY_LABELERS`) take no model. `models` is keyed as
  `DEFAULT_MODELS`: tasks that share a network (`SHARED_NETWORKS`) get one instance of it."""
  models = {**DEFAULT_MODELS, **{k: v for k, v in (models or {}).items() if v}}
  networks: dict[str, Any] = {}

  def network(key):
    """The one instance of a network tasks share: depth, SAM's mask generator, DINOv2."""
    if key not in networks:
      from pseudolabel import depth, dinov2
      classes = {"depth": depth.DepthLabeler, "sam": sam.SamMaskGenerator,
                 "dinov2": dinov2.Dinov2Labeler}
      networks[key] = _load(classes[key], models[key], device)
    return networks[key]

  def build(task):
    if task in LIBRARY_LABELERS:
      return LIBRARY_LABELERS[task]()
    from pseudolabel import clip_features, detection, dinov2, human_poses, semseg, t5_caption
    if task == "normals":
      return normals.NormalsFromDepth(network("depth"), fov_deg)
    derived_from = {"sam_edge": sam.SamEdgeLabeler, "sam_instance": sam.SamInstanceLabeler,
                    "dinov2_global": dinov2.Dinov2GlobalLabeler}
    if task in derived_from:
      return derived_from[task](network(SHARED_NETWORKS[task]))
    if task in ("depth", "dinov2"):
      return network(task)
    if task == "human_keypoints":
      return _human_keypoints(human_poses.HumanKeypointsLabeler, models, device)
    classes = {"semseg": semseg.SemsegLabeler, "det": detection.DetectionLabeler,
               "clip": clip_features.ClipLabeler, "t5_caption": t5_caption.T5CaptionLabeler}
    return _load(classes[task], models[task], device)

  return {task: build(task) for task in tasks}


def _load(cls, name: str, device: str):
  return cls.tiny(device) if name == torch_model.TINY else cls.from_pretrained(name, device=device)


def _human_keypoints(cls, models: Mapping[str, str], device: str):
  """ViTPose on the people that the det model finds."""
  if models["human_keypoints"] == torch_model.TINY:
    return cls.tiny(device)
  if models["det"] == torch_model.TINY:
    raise UsageError("human_keypoints: a published pose model finds its people with the "
                     "--det-model detector; give a published one, not tiny-random")
  return cls.from_pretrained(models["human_keypoints"], device=device, detector=models["det"])


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


def _from_shared(labeler, outputs: Sequence, images: Sequence, task: str,
                 errors: list[list[str]]) -> list:
  """The labeler's outputs derived from a shared network's (None where that failed)."""
  todo = [i for i, output in enumerate(outputs) if output is not None]
  made: list = [None] * len(outputs)
  if todo:

    def derive(pairs):
      return labeler.from_shared([output for output, _ in pairs], [image for _, image in pairs])

    pairs = [(outputs[i], images[i]) for i in todo]
    for i, output in zip(todo, _run_isolated(derive, pairs, task, [errors[i] for i in todo])):
      made[i] = output
  return made


def _measured(output) -> dict[str, float]:
  """What a shared network's output tells the record-reading labelers (metadata) beyond
  the modalities: SAM's automatic masks are the image's SAM instances, counted. No
  stored modality holds the count (a sam_instance record lists only the instances at
  its query points), so a later run reading this one's output cannot see it."""
  if isinstance(output, sam.SamMasks):
    return {metadata_labeler.SAM_COUNT: float(len(output))}
  return {}


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
  tasks = [t for t in TASK_ORDER if t in labelers]
  shared: dict[Any, list] = {}            # a shared network's step -> its outputs here
  measured: list[dict] = [{} for _ in samples]
  for task in tasks:
    labeler = labelers[task]
    step = getattr(labeler, "shared", None)
    if task == "normals" and labeler.depth is labelers.get("depth"):
      # Same depth network: derive normals from the maps just made, where there are some.
      made = [_normals_of(labeler, d, e) for d, e in zip(results["depth"], errors)]
    elif step is not None:
      if step not in shared:  # the first of the tasks sharing it: run it, for all of them
        users = [t for t in tasks if getattr(labelers[t], "shared", None) == step]
        shared[step] = _run_isolated(step, images, "+".join(users), errors)
        for extra, output in zip(measured, shared[step]):
          extra.update(_measured(output))
      made = _from_shared(labeler, shared[step], images, task, errors)
    elif getattr(labeler, "reads", None):
      # The record as read, overlaid with what this run made (and measured) for it so far.
      inputs = [{**sample, **extra, **made_here}
                for sample, extra, made_here in zip(samples, measured, records_out)]
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
  for task, what in DESCRIPTIONS.items():
    if task in labelers:
      metadata[TASK_MODALITIES[task]] = what
  if hasattr(labelers.get("dinov2"), "grid"):
    metadata[TASK_MODALITIES["dinov2"]] += (
        f", [{labelers['dinov2'].grid}, {labelers['dinov2'].grid}, "
        f"{labelers['dinov2'].model.config.hidden_size}] of the whole image resized to "
        f"{labelers['dinov2'].input_size} px")
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
