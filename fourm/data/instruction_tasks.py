"""Instruction tasks with exact answers, drawn from the synthetic world's scenes.

Sample i of a split depends only on (seed, split, i, resolution, tasks). Its source
scene is the world's scene i (the one `fourm synth` renders as record i with the same
seed); which task, object, wording and new value it gets is drawn from a stream of its
own. A task that cannot be posed unambiguously on the scene (no object that a phrase
picks out alone, an edit that would not fit on the floor or could not be seen) gives
way to another of the tasks asked for, and if none can be posed (rare: an edit-only
dataset and a scene whose objects are all white, gray or hidden), the sample draws its
next scene from its own stream.

Edits are validated before they are kept: the exact edited render must pass the
check (`instruction_checks`) and the unedited source must fail it, so every edit is
visible and its check accepts the true answer by construction.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fourm import modalities
from fourm.data import color_detector, instruction_answers, scene_edits, scene_graph, synthetic
from fourm.data.instruction_checks import check
from fourm.data.instruction_phrases import (EDIT_ATTRIBUTES, QUESTION_KINDS, TASKS, Detect, Edit,
                                            Instruction, Question, Segment, phrase)
from fourm.data.scene_graph import SceneView

INSTRUCTION = modalities.INSTRUCTION.name  # the record field (a text the model reads)

# A segment / detect / count task asks for a class not in view this often (when the
# scene lacks one): "zero", an empty mask, no boxes. The answer must then come from the
# image, not from the instruction's noun.
ABSENT_SHARE = 0.15
MOVE_DISTANCE = (0.8, 1.4)  # metres; at least a tenth of the image width at any distance
MAX_SCENES = 20
_TASK_STREAM = 2  # spawn key of the task draws (synthetic's palette size uses 1)
# What a question's referent leaves out: "what color is the large cube?" names no color.
_ASKED = {"color": "color", "shape": "category", "size": "size"}


@dataclasses.dataclass(frozen=True, eq=False)
class InstructionSample:
  """One instruction on one scene, with its exact answer."""
  key: str
  instruction: Instruction
  text: str
  source: SceneView
  answer: dict                 # the answer field (instruction_checks.ANSWER_FIELDS)
  edited: SceneView | None     # edits: the edited scene, rendered

  @property
  def task(self) -> str:
    return self.instruction.task

  def record(self) -> dict:
    """The instruction dataset's record: the key, the source image, the instruction and
    the answer (an edit's answer image goes to the edited store, `edited_record`)."""
    record = {"key": self.key, "rgb": self.source.maps["rgb"], INSTRUCTION: self.text}
    if self.task != "edit":
      record.update(self.answer)
    return record

  def edited_record(self) -> dict:
    """The edited store's record: the edited image as its "rgb", nothing for other tasks."""
    return {"rgb": self.edited.maps["rgb"]} if self.edited is not None else {}


def _choice(rng: np.random.Generator, options):
  return options[rng.integers(len(options))]


def _in_turn(rng: np.random.Generator, options) -> list:
  return [options[i] for i in rng.permutation(len(options))]


def _category(view: SceneView, rng: np.random.Generator) -> str:
  present = sorted({o.category for o in view.seen})
  absent = [c for c in synthetic.OBJECT_CLASSES if c not in present]
  if absent and (not present or rng.uniform() < ABSENT_SHARE):
    return _choice(rng, absent)
  return _choice(rng, present)


def _new_values(attribute: str, obj: scene_graph.SeenObject, rng: np.random.Generator) -> list:
  """The values an edit of `attribute` may give `obj`, the first drawn, in the order to
  try them: one new color, the other size, or both directions in turn."""
  if attribute == "color":
    return [_choice(rng, [c for c in color_detector.CHROMATIC if c != obj.color])]
  if attribute == "size":
    return [s for s in synthetic.SIZES if s != obj.size]
  return _in_turn(rng, scene_edits.DIRECTIONS)


def _make_edit(view: SceneView, rng: np.random.Generator):
  candidates = [o for o in view.seen if o.clear]
  for attribute in _in_turn(rng, EDIT_ATTRIBUTES):
    for obj in _in_turn(rng, candidates):
      # Size and moves are checked by the object's color, which white and gray lack.
      if attribute != "color" and obj.color not in color_detector.CHROMATIC:
        continue
      names = scene_graph.referents(obj, view.seen)
      if not names:
        continue
      referent, distance = _choice(rng, names), rng.uniform(*MOVE_DISTANCE)
      for value in _new_values(attribute, obj, rng):
        edit = Edit(referent, attribute, value)
        scene = instruction_answers.edited_scene(edit, view, distance)
        if scene is None:
          continue
        edited = SceneView.render(scene, view.resolution)
        if (check(edit, {"rgb": edited.maps["rgb"]}, view).follows and
            not check(edit, {"rgb": view.maps["rgb"]}, view).follows):
          return edit, {"rgb": edited.maps["rgb"]}, edited
  return None


def _make_segment(view: SceneView, rng: np.random.Generator):
  category = _category(view, rng)
  plural = sum(o.category == category for o in view.seen) != 1
  return (Segment(category, plural),
          {"semseg": instruction_answers.segment_answer(category, view)}, None)


def _make_detect(view: SceneView, rng: np.random.Generator):
  category = _category(view, rng)
  plural = sum(o.category == category for o in view.seen) != 1
  return (Detect(category, plural),
          {"det": instruction_answers.detect_answer(category, view)}, None)


def _pose_question(kind: str, view: SceneView, rng: np.random.Generator) -> Question | None:
  if kind == "count":
    return Question("count", category=_category(view, rng))
  for obj in _in_turn(rng, [o for o in view.seen if o.clear]):
    if kind == "relation":
      relations = [r for r in scene_graph.RELATIONS if scene_graph.related(view.seen, obj, r)]
      names = scene_graph.referents(obj, view.seen)
      if relations and names:
        return Question("relation", _choice(rng, names), relation=_choice(rng, relations))
      continue
    names = scene_graph.referents(obj, view.seen, without=(_ASKED[kind],))
    if names:
      return Question(kind, _choice(rng, names))
  return None


def _make_question(view: SceneView, rng: np.random.Generator):
  for kind in _in_turn(rng, QUESTION_KINDS):
    question = _pose_question(kind, view, rng)
    answer = question and instruction_answers.question_answer(question, view)
    if answer:
      return question, {"caption": answer}, None
  return None


_MAKERS = {"edit": _make_edit, "segment": _make_segment, "detect": _make_detect,
           "question": _make_question}
assert set(_MAKERS) == set(TASKS)


def task_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence(
      [seed, synthetic.SPLITS.index(split), index], spawn_key=(_TASK_STREAM,)))


def check_tasks(tasks) -> tuple[str, ...]:
  """The tasks asked for, in TASKS order; ValueError for an unknown one or none."""
  unknown = sorted(set(tasks) - set(TASKS))
  if unknown or not tasks:
    raise ValueError(f"unknown instruction task(s) {unknown}; choose from {','.join(TASKS)}"
                     if unknown else "no instruction task asked for")
  return tuple(t for t in TASKS if t in tasks)


def make_instruction_sample(seed: int, split: str, index: int, resolution: int = 64,
                            tasks=TASKS) -> InstructionSample:
  """Sample `index` of `split`: one of `tasks` posed on a scene, with its exact answer."""
  tasks = check_tasks(tasks)
  rng = task_rng(seed, split, index)
  for attempt in range(MAX_SCENES):
    scene_rng = synthetic.scene_rng(seed, split, index) if attempt == 0 else rng
    view = SceneView.render(synthetic.sample_scene(scene_rng), resolution)
    for task in _in_turn(rng, tasks):
      made = _MAKERS[task](view, rng)
      if made is not None:
        instruction, answer, edited = made
        return InstructionSample(f"{split}/{index:06d}", instruction, phrase(instruction, rng),
                                 view, answer, edited)
  raise RuntimeError(f"no task of {tasks} could be posed on {MAX_SCENES} scenes of "
                     f"{split}/{index:06d} (seed {seed})")
