"""The synthetic world's instruction tasks: exact answers, unambiguous phrasing, the checks
that judge answers, and the dataset job (`fourm synth --tasks`) end to end."""

import dataclasses
import os
import shutil

import numpy as np
import pytest

from fourm import cli
from fourm.data import (augment, instruction_answers, instruction_checks, instruction_phrases,
                        instruction_tasks, instructions, patch_tokens, pipeline, records,
                        scene_edits, scene_graph, synthetic)
from fourm.data.instruction_phrases import Detect, Edit, Question, Segment
from fourm.data.scene_graph import Referent, SceneView

NUM = 48  # samples of each task drawn by the module's fixtures


def _task_samples(task: str, num: int = NUM):
  return [instruction_tasks.make_instruction_sample(0, "train", i, 64, tasks=[task])
          for i in range(num)]


@pytest.fixture(scope="module")
def samples():
  return {task: _task_samples(task) for task in instruction_phrases.TASKS}


def _shard_bytes(directory):
  return {name: open(os.path.join(directory, name), "rb").read()
          for name in sorted(os.listdir(directory)) if name.endswith(".array_record")}


# ------------------------------------------------------------------ drawing the tasks
def test_samples_are_deterministic_and_start_from_the_worlds_scene():
  first = instruction_tasks.make_instruction_sample(3, "val", 7, 64)
  again = instruction_tasks.make_instruction_sample(3, "val", 7, 64)
  assert first.text == again.text and first.key == "val/000007"
  for name, value in first.record().items():
    np.testing.assert_equal(again.record()[name], value)
  others = {instruction_tasks.make_instruction_sample(3, "val", i, 64).text for i in range(8)}
  assert len(others) >= 6
  # Record i's scene is the world's scene i (the same seed).
  for index in range(6):
    sample = instruction_tasks.make_instruction_sample(0, "train", index, 64)
    np.testing.assert_array_equal(sample.source.maps["rgb"],
                                  synthetic.make_sample(0, "train", index, 64)["rgb"])


def test_all_four_tasks_and_every_kind_are_drawn(samples):
  mixed = [instruction_tasks.make_instruction_sample(1, "train", i, 64) for i in range(60)]
  assert {s.task for s in mixed} == set(instruction_phrases.TASKS)
  assert {s.instruction.attribute for s in samples["edit"]} == {"color", "size", "position"}
  kinds = {s.instruction.kind for s in samples["question"]}
  assert kinds == set(instruction_phrases.QUESTION_KINDS)


def test_every_template_parses_back_to_its_instruction():
  rng = np.random.default_rng(0)
  examples = {
      ("edit", "color"): Edit(Referent("cube", "red"), "color", "blue"),
      ("edit", "size"): Edit(Referent("sphere", size="small"), "size", "large"),
      ("edit", "position"): Edit(Referent("cone", "green"), "position", "left"),
      ("segment", ""): Segment("pyramid", plural=True),
      ("detect", ""): Detect("cylinder", plural=False),
      ("question", "relation"): Question("relation", Referent("cone", "red"), relation="left"),
      ("question", "color"): Question("color", Referent("cube", size="large")),
      ("question", "count"): Question("count", category="sphere"),
      ("question", "shape"): Question("shape", Referent(None, "red", "small")),
      ("question", "size"): Question("size", Referent("cylinder", "blue")),
  }
  assert set(examples) == set(instruction_phrases.TEMPLATES)
  for group, instruction in examples.items():
    for template in range(len(instruction_phrases.TEMPLATES[group])):
      text = instruction_phrases.phrase(instruction, rng, template)
      assert instruction_phrases.parse(text) == instruction, text
  assert instruction_phrases.phrase(examples[("edit", "color")], rng, 0) == "make the red cube blue"
  assert instruction_phrases.parse("  Make the small sphere LARGE. ") == examples[("edit", "size")]
  assert instruction_phrases.parse("How many spheres are there") == examples[("question", "count")]
  with pytest.raises(ValueError, match="not an instruction"):
    instruction_phrases.parse("make the red cube fly")
  # A horizontal flip (the training augmentation) mirrors moves and relations.
  flipped = augment.swap_left_right("move the green cone to the left")
  assert instruction_phrases.parse(flipped).value == "right"


def test_instructions_name_exactly_one_object_clearly_in_view(samples):
  named = [s for task in ("edit", "question") for s in samples[task]
           if getattr(s.instruction, "referent", None) is not None]
  assert len(named) > 60
  for sample in named:
    fitting = [o for o in sample.source.seen if sample.instruction.referent.fits(o)]
    assert len(fitting) == 1 and fitting[0].clear, sample.text
  for sample in samples["edit"]:  # and the edit changes that object
    changed = [k for k, (a, b) in enumerate(zip(sample.source.scene.objects,
                                                sample.edited.scene.objects)) if a is not b]
    assert changed == [scene_graph.resolve(sample.instruction.referent, sample.source.seen).index]


# ---------------------------------------------------------------------------- answers
def test_an_edit_changes_the_scene_only_at_the_object_and_its_shadow(samples):
  for sample in samples["edit"]:
    source, edited = sample.source.maps, sample.edited.maps
    k = scene_graph.resolve(sample.instruction.referent, sample.source.seen).index
    old, new = source["object_index"] == k, edited["object_index"] == k
    differs = (source["rgb"] != edited["rgb"]).any(-1)
    assert differs.any(), sample.text
    same_scene = dataclasses.replace(sample.edited.scene, objects=sample.source.scene.objects)
    assert all(getattr(same_scene, f.name) is getattr(sample.source.scene, f.name)
               for f in dataclasses.fields(same_scene))  # camera, light, floor: the same
    if sample.instruction.attribute == "color":
      assert (old == new).all() and not differs[~old].any()
      continue
    # Outside the object's old and new boxes, only its cast shadow may change a pixel.
    boxes = np.zeros_like(old)
    for mask in (old, new):
      rows, cols = np.nonzero(mask)
      boxes[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    shadow = source["cast_shadow"] != edited["cast_shadow"]
    assert not (differs & ~boxes & ~shadow).any(), sample.text
    assert not (differs & ~old & ~new & ~shadow).any(), sample.text


def test_segment_answers_keep_only_the_named_class(samples):
  empty = 0
  for sample in samples["segment"]:
    answer, semseg = sample.answer["semseg"], sample.source.maps["semseg"]
    wanted = synthetic.CLASSES.index(sample.instruction.category)
    np.testing.assert_array_equal(answer == wanted, semseg == wanted)
    objects = np.isin(answer, instruction_answers.OBJECT_IDS)
    assert (answer[objects] == wanted).all()
    floor = synthetic.CLASSES.index("floor")
    np.testing.assert_array_equal(answer == floor, semseg == floor)  # the floor stays
    assert set(np.unique(answer)) <= {0, floor, wanted}
    empty += not (answer == wanted).any()
    in_view = sum(o.category == sample.instruction.category for o in sample.source.seen)
    assert sample.instruction.plural == (in_view != 1)
  assert 0 < empty < NUM // 2  # a class not in view is asked for now and then


def test_detect_answers_hold_the_boxes_of_the_named_class_only(samples):
  for sample in samples["detect"]:
    det = sample.answer["det"]
    records.validate_field("det", det)
    full = synthetic.make_sample(0, "train", int(sample.key.split("/")[1]), 64)["det"]
    keep = [c == sample.instruction.category for c in full["classes"]]
    np.testing.assert_array_equal(det["boxes"], full["boxes"][keep])
    assert det["classes"] == [sample.instruction.category] * sum(keep)


def _look_at(position, target):
  forward = (target - position) / np.linalg.norm(target - position)
  right = np.cross(forward, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right)
  return np.stack([right, np.cross(forward, right), forward], axis=1)


def _object(category, color, size, x, z):
  s = synthetic.SIZES[size]
  width, height = {"sphere": (s, s), "cube": (0.8 * s, 0.8 * s), "cone": (s, 1.2 * s)}[category]
  return synthetic.SceneObject(category, color, size, np.array([x, height, z]), 0.3,
                               np.array([width, height, width]))


@pytest.fixture(scope="module")
def hand_made():
  """A scene laid out by hand, seen from the front: a blue sphere left of a red cone, a
  green cube right of it, a yellow sphere behind it."""
  camera = np.array([0.0, 4.5, 7.0])
  objects = (_object("cone", "red", "large", 0.0, 0.0),
             _object("sphere", "blue", "small", -1.7, 0.0),
             _object("cube", "green", "large", 1.8, 0.0),
             _object("sphere", "yellow", "small", 0.6, -2.2))
  light = np.array([0.3, 1.0, 0.6]) / np.linalg.norm([0.3, 1.0, 0.6])
  scene = synthetic.Scene(camera, _look_at(camera, np.array([0.0, 0.4, 0.0])), light, objects,
                          np.array([0.5, 0.47, 0.42]), np.array([0.62, 0.68, 0.76]))
  return SceneView.render(scene, 64)


@pytest.mark.parametrize("text, answer", [
    ("what is left of the red cone?", "a small blue sphere"),
    ("what is to the right of the cone?", "a large green cube"),
    ("what is behind the red cone?", "a small yellow sphere"),
    ("what color is the large cube?", "green"),
    ("which color does the cone have?", "red"),
    ("how many spheres are there?", "two"),
    ("how many cubes can you see?", "one"),
    ("count the pyramids.", "zero"),
    ("what shape is the green object?", "cube"),
    ("what size is the blue sphere?", "small"),
])
def test_spatial_answers_on_a_hand_made_scene(hand_made, text, answer):
  assert {o.color for o in hand_made.seen if o.clear} == {"red", "blue", "green", "yellow"}
  assert instruction_answers.question_answer(instruction_phrases.parse(text), hand_made) == answer
  verdict = instruction_checks.check(text, {"caption": answer.upper() + "."}, hand_made)
  assert verdict.follows
  assert not instruction_checks.check(text, {"caption": "a purple pyramid"}, hand_made).follows


def test_relations_are_as_the_image_shows_them(hand_made):
  columns = {o.color: np.nonzero(hand_made.mask(o))[1].mean() for o in hand_made.seen}
  assert columns["blue"] < columns["red"] < columns["green"]
  # "right of the blue sphere" fits the cone and the cube: no single answer, no question.
  ambiguous = instruction_phrases.parse("what is right of the blue sphere?")
  assert instruction_answers.question_answer(ambiguous, hand_made) is None
  with pytest.raises(ValueError, match="no single answer"):
    instruction_checks.check(ambiguous, {"caption": "a large red cone"}, hand_made)
  with pytest.raises(ValueError, match="names no single object"):
    instruction_checks.check("what color is the sphere?", {"caption": "blue"}, hand_made)


def test_edits_that_would_not_fit_are_not_made(hand_made):
  scene = hand_made.scene  # objects: red cone, blue sphere, green cube, yellow sphere
  assert scene_edits.move(scene, 0, "right", 1.0) is None  # into the green cube
  assert scene_edits.move(scene, 1, "left", 3.0) is None   # off the scene's floor area
  assert scene_edits.resize(scene, 1, "large").objects[1].half_size[0] == pytest.approx(0.75)
  moved = scene_edits.move(scene, 1, "left", 1.0)
  assert moved.objects[1].position[0] == pytest.approx(-2.7)  # the camera's x is world x here
  assert moved.objects[0] is scene.objects[0] and moved.camera_position is scene.camera_position
  edit = instruction_phrases.parse("make the blue sphere large")
  grown = synthetic.render(instruction_answers.edited_scene(edit, hand_made, 1.0), 64)["rgb"]
  assert instruction_checks.check(edit, {"rgb": grown}, hand_made).follows


# ----------------------------------------------------------------------------- checks
def _other_answer(samples, i):
  return samples[(i + 1) % len(samples)].answer


@pytest.mark.parametrize("task, min_rejected", [
    ("edit", 0.95), ("segment", 0.9), ("detect", 0.9), ("question", 0.8)])
def test_the_check_accepts_the_true_answer_and_rejects_another_scenes(samples, task,
                                                                      min_rejected):
  rejected = []
  for i, sample in enumerate(samples[task]):
    assert instruction_checks.check(sample.text, sample.answer, sample.source).follows
    other = _other_answer(samples[task], i)
    rejected.append(not instruction_checks.check(sample.text, other, sample.source).follows)
  assert np.mean(rejected) >= min_rejected, (task, np.mean(rejected))
  if task == "edit":  # the unedited scene never passes (tasks are drawn so)
    for sample in samples[task]:
      assert not instruction_checks.check(sample.instruction, {"rgb": sample.source.maps["rgb"]},
                                          sample.source).follows


def test_edit_checks_read_images_at_another_resolution(samples):
  for sample in samples["edit"][:12]:
    sharper = synthetic.render(sample.edited.scene, 128)["rgb"]
    assert instruction_checks.check(sample.text, {"rgb": sharper}, sample.source).follows


def test_checks_reject_answers_that_do_more_than_asked(samples):
  sample = next(s for s in samples["segment"]
                if len({o.category for o in s.source.seen}) > 1 and
                any(o.category == s.instruction.category for o in s.source.seen))
  everything = {"semseg": sample.source.maps["semseg"]}  # every class kept
  assert not instruction_checks.check(sample.text, everything, sample.source).follows
  sample = next(s for s in samples["detect"] if s.answer["det"]["classes"])
  det = sample.answer["det"]
  extra = {"boxes": np.concatenate([det["boxes"], [[0.0, 0.0, 0.1, 0.1]]]).astype(np.float32),
           "classes": det["classes"] + [det["classes"][0]]}
  verdict = instruction_checks.check(sample.text, {"det": extra}, sample.source)
  assert not verdict.follows and 0 < verdict.score < 1
  # A recolor that also repaints the other objects does not follow.
  sample = next(s for s in samples["edit"] if s.instruction.attribute == "color" and
                sum(o.clear and o.color in ("red", "green", "blue", "yellow", "purple",
                                            "cyan", "orange") for o in s.source.seen) > 1)
  repainted = dataclasses.replace(sample.source.scene, objects=tuple(
      dataclasses.replace(o, color=sample.instruction.value) for o in sample.source.scene.objects))
  image = synthetic.render(repainted, 64)["rgb"]
  verdict = instruction_checks.check(sample.text, {"rgb": image}, sample.source)
  assert not verdict.follows and "lost" in verdict.detail


def test_answers_are_compared_after_normalisation():
  normalize = instruction_checks.normalize_answer
  assert normalize("Two.") == normalize("2") == "two"
  assert normalize("A small blue sphere!") == normalize("small  blue sphere") == "small blue sphere"
  assert normalize("grey") == "gray" and normalize("the cube") != normalize("cubes")


# ------------------------------------------------------------------- the dataset job
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("instructions") / "data")
  assert cli.main(["synth", "--out", out, "--num", "30", "--instructions", "--seed", "2",
                   "--records-per-shard", "12", "--workers", "1", "--quiet"]) == 0
  return out


def test_the_cli_writes_records_and_edited_images_side_by_side(dataset, capsys):
  info = records.DatasetInfo.load(dataset)
  edited = os.path.join(dataset, instructions.EDITED_DIR)
  assert info.metadata["answer_fields"] == instruction_checks.ANSWER_FIELDS
  assert info.splits["train"].num_records == 27 and info.splits["val"].num_records == 3
  edited_info = records.DatasetInfo.load(edited)
  assert edited_info.splits["train"].shards == info.splits["train"].shards
  assert edited_info.splits["train"].shard_lengths == info.splits["train"].shard_lengths
  for split in ("train", "val"):
    source = records.RecordSource(dataset, split)
    for index in range(len(source)):
      record = source[index]
      sample = instructions.regenerate(dataset, record["key"])
      assert record["instruction"] == sample.text
      np.testing.assert_array_equal(record["rgb"], sample.source.maps["rgb"])
      answers = {"semseg", "det", "caption"} & set(record)
      field = instruction_checks.ANSWER_FIELDS[sample.task]
      assert answers == ({field} - {"rgb"})  # only its own task's answer
      if sample.task == "edit":
        store = instructions.EDITED_DIR
        shard, position = _locate(info.splits[split], index)
        image = _read_raw(os.path.join(dataset, store, shard), position)
        np.testing.assert_array_equal(image["rgb"], sample.answer["rgb"])
      answer = sample.answer if sample.task == "edit" else {field: record[field]}
      assert instruction_checks.check(record["instruction"], answer, sample.source).follows
  assert edited_info.modalities["rgb"]["count"] == sum(
      instructions.regenerate(dataset, f"{s}/{i:06d}").task == "edit"
      for s, n in (("train", 27), ("val", 3)) for i in range(n))


def _locate(split_info, index):
  start = 0
  for shard, length in zip(split_info.shards, split_info.shard_lengths):
    if index < start + length:
      return shard, index - start
    start += length
  raise IndexError(index)


def _read_raw(path, position):
  from array_record.python import array_record_module
  reader = array_record_module.ArrayRecordReader(path, records.READER_OPTIONS)
  data = reader.read([position])[0]
  reader.close()
  return records.decode_sample(data)


def test_a_killed_job_resumes_to_the_same_bytes_and_other_jobs_are_refused(dataset, tmp_path,
                                                                           capsys):
  copy = str(tmp_path / "copy")
  shutil.copytree(dataset, copy)
  lost = "train-00001-of-00003.array_record"
  os.remove(os.path.join(copy, lost))  # as if killed while writing it
  os.remove(os.path.join(copy, instructions.EDITED_DIR, lost))
  os.remove(os.path.join(copy, records.INFO_FILE))
  assert cli.main(["synth", "--out", copy, "--num", "30", "--instructions", "--seed", "2",
                   "--records-per-shard", "12", "--workers", "1", "--quiet"]) == 0
  assert "resuming: 3 of 4 shards already written" in capsys.readouterr().out
  assert _shard_bytes(copy) == _shard_bytes(dataset)
  edited = instructions.EDITED_DIR
  assert _shard_bytes(os.path.join(copy, edited)) == _shard_bytes(os.path.join(dataset, edited))
  assert cli.main(["synth", "--out", copy, "--num", "30", "--tasks", "segment", "--seed", "2",
                   "--records-per-shard", "12", "--quiet"]) == 2
  assert "already holds an instruction dataset made with" in capsys.readouterr().err
  assert cli.main(["synth", "--out", str(tmp_path / "x"), "--num", "4", "--tasks", "paint",
                   "--quiet"]) == 2
  assert "unknown instruction task(s) ['paint']" in capsys.readouterr().err


def test_worker_processes_write_the_same_bytes(dataset, tmp_path):
  again = str(tmp_path / "again")
  assert cli.main(["synth", "--out", again, "--num", "30", "--instructions", "--seed", "2",
                   "--records-per-shard", "12", "--workers", "2", "--quiet"]) == 0
  assert _shard_bytes(again) == _shard_bytes(dataset)
  edited = instructions.EDITED_DIR
  assert _shard_bytes(os.path.join(again, edited)) == _shard_bytes(os.path.join(dataset, edited))


def test_an_edit_dataset_tokenizes_and_loads_with_the_existing_jobs(tmp_path, capsys):
  data, tokens = str(tmp_path / "edits"), str(tmp_path / "edit_tokens")
  assert cli.main(["synth", "--out", data, "--num", "8", "--tasks", "edit", "--workers", "1",
                   "--quiet"]) == 0
  assert cli.main(["tokenize", "--data", os.path.join(data, instructions.EDITED_DIR),
                   "--out", tokens, "--method", "patches", "--modalities", "tok_rgb",
                   "--quiet"]) == 0
  config = pipeline.PipelineConfig(data=(data, tokens), batch_size=4, augment=False,
                                   shuffle=False, num_epochs=1)
  batch = next(iter(pipeline.Pipeline(config)))
  assert set(batch) == {"key", "rgb", "instruction", "tok_rgb", "meta"}
  quantizer = patch_tokens.quantizer_for("tok_rgb")
  for row in range(4):
    sample = instructions.regenerate(data, str(batch["key"][row]))
    assert batch["instruction"][row] == sample.text
    np.testing.assert_array_equal(batch["rgb"][row], sample.source.maps["rgb"])  # input
    np.testing.assert_array_equal(batch["tok_rgb"][row],  # target: the edited scene
                                  quantizer.encode(sample.answer["rgb"], 8))
