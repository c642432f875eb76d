"""Instructions as data, and the words that say them: `phrase` writes one of a few
templates per instruction, `parse` reads any of them back.

An instruction is one of four tasks:

  Edit(referent, attribute, value)   "make the red cube blue", "move the cone to the left"
  Segment(category, plural)          "segment the spheres"
  Detect(category, plural)           "detect the cube"
  Question(kind, ...)                "what is left of the red cone?", "how many cubes are
                                     there?", "what color is the large cube?"

Every template is a pattern too, so `parse(phrase(x)) == x` for each template, and a
held-out instruction written by hand in the same words parses as well. Text is
lowercase; parsing ignores case, surrounding space and a final '.', '?' or '!'.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np

from fourm.data import scene_graph, synthetic
from fourm.data.scene_graph import Referent

EDIT_ATTRIBUTES = ("color", "size", "position")
QUESTION_KINDS = ("relation", "color", "count", "shape", "size")


@dataclasses.dataclass(frozen=True)
class Edit:
  referent: Referent
  attribute: str   # one of EDIT_ATTRIBUTES
  value: str       # the new color, the new size, or "left" / "right" for a move
  task = "edit"


@dataclasses.dataclass(frozen=True)
class Segment:
  category: str
  plural: bool = True  # "the spheres" or "the sphere": wording only
  task = "segment"


@dataclasses.dataclass(frozen=True)
class Detect:
  category: str
  plural: bool = True
  task = "detect"


@dataclasses.dataclass(frozen=True)
class Question:
  kind: str                       # one of QUESTION_KINDS
  referent: Referent | None = None  # relation / color / shape / size: what it asks about
  relation: str | None = None     # relation: one of scene_graph.RELATIONS
  category: str | None = None     # count: the class counted
  task = "question"


Instruction = Edit | Segment | Detect | Question
TASKS = ("edit", "segment", "detect", "question")

_RELATION_WORDS = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
                   "front": ("in front of",), "behind": ("behind",)}
# {template group: templates}; a group is (task, attribute or kind). Fields in braces.
TEMPLATES: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("edit", "color"): ("make {referent} {color}", "paint {referent} {color}",
                        "change the color of {referent} to {color}", "turn {referent} {color}"),
    ("edit", "size"): ("make {referent} {size}", "change the size of {referent} to {size}",
                       "resize {referent} to {size}"),
    ("edit", "position"): ("move {referent} to the {direction}",
                           "shift {referent} to the {direction}",
                           "push {referent} to the {direction}"),
    ("segment", ""): ("segment the {noun}", "mask the {noun}",
                      "give the segmentation of the {noun}"),
    ("detect", ""): ("detect the {noun}", "find the {noun}", "locate the {noun}"),
    ("question", "relation"): ("what is {relation} {referent}?",),
    ("question", "color"): ("what color is {referent}?", "which color does {referent} have?"),
    ("question", "count"): ("how many {plural} are there?", "how many {plural} can you see?",
                            "count the {plural}."),
    ("question", "shape"): ("what shape is {referent}?",
                            "what kind of object is {referent}?"),
    ("question", "size"): ("what size is {referent}?", "is {referent} small or large?"),
}


def _alternatives(words) -> str:
  return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_CLASSES = synthetic.OBJECT_CLASSES
_FIELDS = {
    "referent": f"the (?:{_alternatives(synthetic.SIZES)} )?(?:{_alternatives(synthetic.COLORS)} )?"
                f"{_alternatives(_CLASSES + (scene_graph.OBJECT_NOUN,))}",
    "color": _alternatives(synthetic.COLORS),
    "size": _alternatives(synthetic.SIZES),
    "direction": "(?:left|right)",
    "noun": _alternatives(_CLASSES + tuple(map(scene_graph.plural, _CLASSES))),
    "plural": _alternatives(map(scene_graph.plural, _CLASSES)),
    "relation": _alternatives(w for words in _RELATION_WORDS.values() for w in words),
}


def _pattern(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", _bare(template))
  regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})"
                  for i, part in enumerate(parts))
  return re.compile(regex + r"\Z")


def _bare(text: str) -> str:
  return text.strip().lower().rstrip(".?!").strip()


_PATTERNS = [(group, _pattern(t)) for group, templates in TEMPLATES.items() for t in templates]


def _group(instruction: Instruction) -> tuple[str, str]:
  if isinstance(instruction, Edit):
    return ("edit", instruction.attribute)
  if isinstance(instruction, Question):
    return ("question", instruction.kind)
  return (instruction.task, "")


def _fields(instruction: Instruction, rng: np.random.Generator) -> dict[str, str]:
  fields = {}
  if getattr(instruction, "referent", None) is not None:
    fields["referent"] = instruction.referent.phrase
  if isinstance(instruction, Edit):
    name = {"color": "color", "size": "size", "position": "direction"}[instruction.attribute]
    fields[name] = instruction.value
  elif isinstance(instruction, (Segment, Detect)):
    fields["noun"] = (scene_graph.plural(instruction.category) if instruction.plural
                      else instruction.category)
  elif instruction.kind == "count":
    fields["plural"] = scene_graph.plural(instruction.category)
  elif instruction.kind == "relation":
    words = _RELATION_WORDS[instruction.relation]
    fields["relation"] = words[rng.integers(len(words))]
  return fields


def phrase(instruction: Instruction, rng: np.random.Generator,
           template: int | None = None) -> str:
  """The instruction in words: template number `template` of its group, or one drawn
  from `rng` (and, where a relation has several wordings, one of those)."""
  templates = TEMPLATES[_group(instruction)]
  chosen = templates[rng.integers(len(templates)) if template is None else template]
  return chosen.format(**_fields(instruction, rng))


def _referent(text: str) -> Referent:
  words = text.split()[1:]  # after "the"
  found = {"category": None if words[-1] == scene_graph.OBJECT_NOUN else words[-1]}
  for word in words[:-1]:
    found["size" if word in synthetic.SIZES else "color"] = word
  return Referent(**found)


def _singular(noun: str) -> str:
  return noun if noun in _CLASSES else noun[:-1]


def _build(group: tuple[str, str], fields: dict[str, str]) -> Instruction:
  task, sub = group
  referent = _referent(fields["referent"]) if "referent" in fields else None
  if task == "edit":
    value = fields.get("color") or fields.get("size") or fields["direction"]
    return Edit(referent, sub, value)
  if task in ("segment", "detect"):
    noun = fields["noun"]
    return (Segment if task == "segment" else Detect)(_singular(noun), noun not in _CLASSES)
  if sub == "count":
    return Question("count", category=_singular(fields["plural"]))
  if sub == "relation":
    relation = next(r for r, words in _RELATION_WORDS.items() if fields["relation"] in words)
    return Question("relation", referent, relation=relation)
  return Question(sub, referent)


def parse(text: str) -> Instruction:
  """The instruction a text says; ValueError for a text in none of the templates' words."""
  bare = _bare(text)
  for group, pattern in _PATTERNS:
    match = pattern.match(bare)
    if match:
      return _build(group, match.groupdict())
  raise ValueError(f"not an instruction of the synthetic world's tasks: {text!r}")
