"""The registry: the 4M-7 set, token counts per layout, and adding a modality as one entry."""

import numpy as np
import pytest

from fourm import modalities
from fourm.data import augment, records
from fourm.modalities import Form, Kind, ModalitySpec, RawSpec, Resample, Role, Values


def test_4m7_set_at_reference_and_small_layouts():
  assert modalities.MODALITY_SET_4M7 == (
      "rgb", "tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_clip", "caption", "det")
  ref = modalities.token_counts(modalities.MODALITY_SET_4M7, modalities.REFERENCE_LAYOUT)
  small = modalities.token_counts(modalities.MODALITY_SET_4M7, modalities.SMALL_LAYOUT)
  for name in ("rgb", "tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_clip"):
    assert ref[name] == 196 and small[name] == 64
  assert ref["caption"] == small["caption"] == 256 == ref["det"]
  vocab = {name: modalities.get(name).vocab_size for name in modalities.MODALITY_SET_4M7}
  assert vocab == {"rgb": None, "tok_rgb": 16384, "tok_depth": 8192, "tok_normal": 8192,
                   "tok_semseg": 4096, "tok_clip": 8192, "caption": 30000, "det": 30000}


def test_roles_positions_and_sources():
  rgb, caption = modalities.get("rgb"), modalities.get("caption")
  assert rgb.can_input and not rgb.can_target and rgb.kind == Kind.PIXELS
  assert modalities.get("tok_rgb").can_target and modalities.get("tok_rgb").source.name == "rgb"
  assert rgb.positions == "2d" and caption.positions == "1d"
  assert modalities.get("tok_normal").source.flip == modalities.Flip.NEGATE_X
  assert modalities.get("tok_semseg").source.resample == Resample.NEAREST
  assert set(modalities.sources(["tok_rgb", "rgb", "det"])) == {"rgb", "det"}


def test_invalid_specs_are_refused():
  with pytest.raises(ValueError, match="raw pixels can only be an input"):
    ModalitySpec("x", Kind.PIXELS, modalities.RGB, roles=modalities.BOTH)
  with pytest.raises(ValueError, match="needs a vocab_size"):
    ModalitySpec("x", Kind.IMAGE_TOKENS, modalities.DEPTH)
  with pytest.raises(ValueError, match="needs max_length"):
    ModalitySpec("x", Kind.SEQUENCE, modalities.CAPTION, vocab_size=10)
  with pytest.raises(ValueError, match="already registered"):
    modalities.register_raw(RawSpec("depth", Form.IMAGE, "uint16", Values.DISTANCE))
  with pytest.raises(ValueError, match="reserved"):
    modalities.register_raw(RawSpec("meta", Form.TEXT, "str", Values.TEXT))
  with pytest.raises(ValueError, match="not a multiple"):
    modalities.Layout(100, 16)
  with pytest.raises(KeyError, match="unknown modality 'tok_nope'"):
    modalities.get("tok_nope")


@pytest.fixture
def canny_edge():
  """A 4M-21 modality added with one `register` call, removed afterwards."""
  spec = modalities.register(ModalitySpec(
      "tok_canny_edge", Kind.IMAGE_TOKENS, vocab_size=8192,
      source=RawSpec("canny_edge", Form.IMAGE, "uint8", Values.CLASSES, resample=Resample.NEAREST)))
  yield spec
  modalities.MODALITIES.pop("tok_canny_edge")
  modalities.RAW_MODALITIES.pop("canny_edge")


def test_a_4m21_modality_is_one_entry(canny_edge):
  assert modalities.token_counts(["tok_canny_edge"], modalities.SMALL_LAYOUT) == \
      {"tok_canny_edge": 64}
  assert "tok_canny_edge" in modalities.describe(modalities.SMALL_LAYOUT)
  # The record layer validates it and the augmentation crops it with the image.
  edges = np.zeros((32, 32), np.uint8)
  edges[:, 16:] = 1
  sample = {"rgb": np.zeros((32, 32, 3), np.uint8), "canny_edge": edges}
  records.validate_sample(sample)
  flipped = augment.apply_crop(sample, (0, 0, 1, 1), flip=True, resolution=16)
  assert flipped["canny_edge"].shape == (16, 16)
  assert flipped["canny_edge"][:, :8].all() and not flipped["canny_edge"][:, 8:].any()
  with pytest.raises(records.RecordError, match="'canny_edge'.*dtype uint8"):
    records.validate_sample({"canny_edge": edges.astype(np.float32)}, path="x", record=3)
  assert Role.TARGET in canny_edge.roles
