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
  with pytest.raises(ValueError, match="pixels modality has no vocabulary and can only be an input"):
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
def hed_edge():
  """A new modality (HED edges) added with one `register` call, removed afterwards."""
  spec = modalities.register(ModalitySpec(
      "tok_hed_edge", Kind.IMAGE_TOKENS, vocab_size=8192,
      source=RawSpec("hed_edge", Form.IMAGE, "uint8", Values.CLASSES, resample=Resample.NEAREST)))
  yield spec
  modalities.MODALITIES.pop("tok_hed_edge")
  modalities.RAW_MODALITIES.pop("hed_edge")


def test_a_new_modality_is_one_entry(hed_edge):
  assert modalities.token_counts(["tok_hed_edge"], modalities.SMALL_LAYOUT) == \
      {"tok_hed_edge": 64}
  assert "tok_hed_edge" in modalities.describe(modalities.SMALL_LAYOUT)
  # The record layer validates it and the augmentation crops it with the image.
  edges = np.zeros((32, 32), np.uint8)
  edges[:, 16:] = 1
  sample = {"rgb": np.zeros((32, 32, 3), np.uint8), "hed_edge": edges}
  records.validate_sample(sample)
  flipped = augment.apply_crop(sample, (0, 0, 1, 1), flip=True, resolution=16)
  assert flipped["hed_edge"].shape == (16, 16)
  assert flipped["hed_edge"][:, :8].all() and not flipped["hed_edge"][:, 8:].any()
  with pytest.raises(records.RecordError, match="'hed_edge'.*dtype uint8"):
    records.validate_sample({"hed_edge": edges.astype(np.float32)}, path="x", record=3)
  assert Role.TARGET in hed_edge.roles


def test_the_4m21_set_has_the_reference_layouts():
  """Names, vocabularies and token counts of apple/ml-4m's modality_info at 224 px."""
  counts = modalities.token_counts(modalities.MODALITY_SET_4M21, modalities.REFERENCE_LAYOUT)
  assert counts == {
      "rgb": 196, "caption": 256, "t5_caption": 77, "det": 256, "metadata": 40,
      "tok_rgb": 196, "tok_normal": 196, "tok_depth": 196, "tok_semseg": 196,
      "tok_clip": 196, "human_poses": 263, "tok_dinov2": 256, "tok_dinov2_global": 16,
      "tok_imagebind": 256, "tok_imagebind_global": 16, "tok_sam_edge": 196,
      "tok_canny_edge": 196, "color_palette": 23, "sam_instance": 290}
  vocab = {n: modalities.get(n).vocab_size for n in modalities.MODALITY_SET_4M21}
  assert vocab["t5_caption"] is None and vocab["rgb"] is None
  assert {vocab[n] for n in ("metadata", "human_poses", "color_palette", "sam_instance",
                             "caption", "det")} == {30000}
  assert {vocab[n] for n in ("tok_dinov2", "tok_imagebind", "tok_dinov2_global",
                             "tok_imagebind_global", "tok_sam_edge", "tok_canny_edge")} == {8192}
  assert modalities.get("tok_dinov2").grid_shape(modalities.REFERENCE_LAYOUT) == (16, 16)
  assert modalities.get("tok_dinov2_global").positions == "learned"
  t5 = modalities.get("t5_caption")
  assert t5.can_input and not t5.can_target and t5.source.channels == 4096
  # 14 px patches do not tile the 64 px layout: said, not miscounted.
  with pytest.raises(ValueError, match="14 px patches do not tile 64 px"):
    modalities.get("tok_dinov2").num_tokens(modalities.SMALL_LAYOUT)
  assert "tok_dinov2 " in modalities.describe(modalities.SMALL_LAYOUT)


def test_retrieved_documents_are_input_only_copies_of_their_base():
  spec = modalities.get("ret2_caption")
  base = modalities.get("caption")
  assert (spec.kind, spec.vocab_size, spec.max_length, spec.tokenizer, spec.source) == \
      (base.kind, base.vocab_size, base.max_length, base.tokenizer, base.source)
  assert spec.can_input and not spec.can_target
  assert modalities.retrieved_base("ret2_caption") == (2, "caption")
  assert modalities.retrieved_base("caption") is None
  assert modalities.retrieved_base("ret0_caption") is None  # documents count from 1
  # A run's own vocabulary for the base serves its retrieved documents too.
  assert modalities.get("ret1_tok_rgb", {"tok_rgb": 1024}).vocab_size == 1024
  assert modalities.get("ret1_tok_rgb", {"tok_rgb": 1024, "ret1_tok_rgb": 512}).vocab_size == 512
  # Pixels and feature maps live under their raw source's name: no copies of those.
  with pytest.raises(ValueError, match="not pixels"):
    modalities.get("ret1_rgb")
  assert not modalities.is_known("ret1_nothing")
  # Registered, a document's grid is no second "token grid made from rgb".
  modalities.get("ret3_tok_rgb")
  assert modalities.get("ret3_tok_rgb").derived and not modalities.get("tok_rgb").derived
  assert modalities.grid_modality_of("rgb") == "tok_rgb"
