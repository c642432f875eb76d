"""The modality registry: what every modality is, as data.

Two levels, deliberately kept apart:

* `RawSpec` says how a modality is *stored* in a record (dtype, channels) and how
  it behaves under cross-modal augmentation (resampling, what a horizontal flip
  does to its values). Pseudo-labelers write raw modalities; tokenizers read them.
* `ModalitySpec` says what the *model* sees: a kind (pixel patches, a grid of VQ
  tokens, a token sequence, a feature map, a global vector), vocabulary, tokenizer,
  positions, and whether it may be an input, a target or both. Each names the raw
  modality it is derived from, inline, so adding a 4M-21 modality is one entry:

      register(ModalitySpec("tok_edges", Kind.IMAGE_TOKENS, vocab_size=8192,
                            source=RawSpec("edges", Form.IMAGE, "uint8", Values.CLASSES,
                                           resample=Resample.NEAREST)))

Resolution is not part of a name: a `Layout` (resolution, patch size) turns a spec
into token counts, so the same registry serves the reference 224 px layout and the
small 64 px layout used for CPU work. The one exception is a model that reads one
modality at two image sizes (the reference's super-resolution model has tok_rgb at
224 px and at 448 px): "tok_rgb@448" names tok_rgb fixed at 448 px whatever the layout,
a variant `get` derives on first use (`at_resolution`).

This module knows nothing about models, files or training.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping


class Kind(enum.StrEnum):
  """How the model consumes a modality."""
  PIXELS = "pixels"              # raw image, linear patch embedding (input only)
  IMAGE_TOKENS = "image_tokens"  # 2D grid of VQ-VAE token ids
  SEQUENCE = "sequence"          # 1D token ids with span masking (caption, det)
  FEATURE_MAP = "feature_map"    # 2D grid of continuous vectors, linear projection
  GLOBAL = "global"              # a fixed number of token ids per sample (1D)
  # A sequence of continuous vectors (4M-21's t5_caption: T5-XXL embeddings of the
  # caption), linearly projected; input only.
  SEQUENCE_EMBEDDINGS = "sequence_embeddings"


class Form(enum.StrEnum):
  """How a raw modality is stored and augmented."""
  IMAGE = "image"                # dense [H, W] or [H, W, C], aligned with rgb pixels
  FEATURE_MAP = "feature_map"    # dense [G, G, D] at patch resolution, aligned with rgb
  BOXES = "boxes"                # {"boxes": float32 [N, 4] xyxy in [0, 1], "classes": [str]}
  TEXT = "text"                  # a str
  VECTOR = "vector"              # [D] or [N, D], not spatial


class Resample(enum.StrEnum):
  BILINEAR = "bilinear"          # continuous values (color, depth, normals, features)
  NEAREST = "nearest"            # labels (class ids, instance ids, edges as classes)


class Flip(enum.StrEnum):
  """What a horizontal flip does to the *values* (the pixels always move)."""
  NONE = "none"
  NEGATE_X = "negate_x"          # vectors in the camera frame: x changes sign
  SWAP_LEFT_RIGHT = "swap_left_right"  # text: "left of" becomes "right of"


class Values(enum.StrEnum):
  """What the numbers of a raw modality mean. Code that treats modalities alike by
  meaning reads this, never a name: a VQ-VAE's normalization, loss and metrics
  (`tokenizers_vq/modality_io.py`), the ground-truth patch quantizer
  (`fourm/data/patch_tokens.py`), how a picture draws it (`fourm/data/visualize.py`),
  which texts train the WordPiece vocabulary. A new family may use a string of its own
  (e.g. "palette") and register its drawer / codec under it."""
  COLOR = "color"            # uint8 RGB [H, W, 3]
  DISTANCE = "distance"      # positive float32 distances [H, W] (depth, metres)
  DIRECTION = "direction"    # float32 unit vectors [H, W, 3] (surface normals)
  CLASSES = "classes"        # integer semantic class ids [H, W]
  INSTANCES = "instances"    # integer instance ids [H, W]: labels without classes
  FEATURES = "features"      # float32 vectors [G, G, D] at patch resolution
  BOXES = "boxes"            # {"boxes", "classes"}
  TEXT = "text"              # words a person wrote or reads (captions)
  NAME = "name"              # bookkeeping (a sample's key): never drawn or modelled


class Role(enum.StrEnum):
  INPUT = "input"
  TARGET = "target"


BOTH = frozenset({Role.INPUT, Role.TARGET})

# Pixel normalizations (mean, std per rgb channel) of the reference: "imagenet" is what
# its 4M models read rgb pixels with, "inception" (= [-1, 1]) what its tokenizers use.
PIXEL_STATS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@dataclasses.dataclass(frozen=True)
class RawSpec:
  """A raw modality as it lives in a record."""
  name: str
  form: Form
  dtype: str                     # numpy dtype name; "str" for text, "boxes" for boxes
  values: str                    # what the numbers mean: a `Values` (or a new family's)
  channels: int | None = None    # None: [H, W]; an int C: [H, W, C] (or [G, G, C])
  resample: Resample | None = None
  flip: Flip = Flip.NONE
  labeler: str | None = None     # the `fourm pseudolabel` task that writes it, if any

  def __post_init__(self):
    spatial = self.form in (Form.IMAGE, Form.FEATURE_MAP)
    if spatial and self.resample is None:
      object.__setattr__(self, "resample", Resample.BILINEAR)
    if not spatial and self.resample is not None:
      raise ValueError(f"raw modality {self.name!r}: only images and feature maps resample")
    if self.flip == Flip.NEGATE_X and not (spatial and self.channels and self.channels >= 1):
      raise ValueError(f"raw modality {self.name!r}: negate_x needs a vector channel axis")
    if self.flip == Flip.SWAP_LEFT_RIGHT and self.form != Form.TEXT:
      raise ValueError(f"raw modality {self.name!r}: swap_left_right applies to text")

  @property
  def is_spatial(self) -> bool:
    return self.form in (Form.IMAGE, Form.FEATURE_MAP)

  @property
  def unit_vectors(self) -> bool:
    """Values are unit vectors: renormalized after resampling."""
    return self.values == Values.DIRECTION


@dataclasses.dataclass(frozen=True)
class Layout:
  """Image resolution and patch size: what turns a spec into token counts."""
  resolution: int
  patch_size: int

  def __post_init__(self):
    if self.resolution % self.patch_size:
      raise ValueError(f"resolution {self.resolution} is not a multiple of patch size "
                       f"{self.patch_size}")

  @property
  def grid(self) -> int:
    return self.resolution // self.patch_size


# The reference 4M layout (224 px, 16 px patches -> 14x14 = 196 tokens) and a small
# one for CPU work (64 px, 8 px patches -> 8x8 = 64 tokens).
REFERENCE_LAYOUT = Layout(resolution=224, patch_size=16)
SMALL_LAYOUT = Layout(resolution=64, patch_size=8)
LAYOUTS = {"reference": REFERENCE_LAYOUT, "small": SMALL_LAYOUT}


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
  """A modality as the model sees it."""
  name: str
  kind: Kind
  source: RawSpec
  vocab_size: int | None = None  # None for continuous kinds
  # The tokenizer family that makes and reads the tokens: "vqvae" for grids (a trained
  # VQ-VAE, or the ground-truth patch quantizer for the demo), a sequence codec of
  # `tokenizers_vq/sequences.py` ("text", "boxes", or one a new family registers).
  tokenizer: str | None = None
  roles: frozenset[Role] = BOTH
  max_length: int | None = None  # sequences: max tokens; global: tokens per sample
  # A grid whose tokens cover other than the layout's patch size: 4M-21's DINOv2 and
  # ImageBind tokens are 14 px patches (16x16 at 224 px). None: the layout's.
  patch_size: int | None = None
  # Learned position embeddings instead of fixed sin-cos ones: the reference's global
  # tokens (tok_dinov2_global, tok_imagebind_global) have them.
  learned_positions: bool = False
  # A grid at a fixed image size instead of the layout's: the "@RES" variants that let
  # one model read a modality at two sizes (`at_resolution`). None: the layout's.
  resolution: int | None = None

  def __post_init__(self):
    continuous = self.kind in (Kind.PIXELS, Kind.FEATURE_MAP, Kind.SEQUENCE_EMBEDDINGS)
    if continuous == (self.vocab_size is not None):
      raise ValueError(f"modality {self.name!r}: kind {self.kind} "
                       f"{'takes no' if continuous else 'needs a'} vocab_size")
    if (self.kind in (Kind.SEQUENCE, Kind.GLOBAL, Kind.SEQUENCE_EMBEDDINGS)
        and not self.max_length):
      raise ValueError(f"modality {self.name!r}: kind {self.kind} needs max_length")
    if continuous and Role.TARGET in self.roles:
      raise ValueError(f"modality {self.name!r}: a {self.kind} modality has no vocabulary "
                       "and can only be an input")
    if self.kind == Kind.SEQUENCE_EMBEDDINGS and not self.source.channels:
      raise ValueError(f"modality {self.name!r}: its raw source must say how many "
                       "channels a vector has")
    if self.patch_size is not None and not self.is_grid:
      raise ValueError(f"modality {self.name!r}: only grids have a patch size")
    if self.resolution is not None and not self.is_grid:
      raise ValueError(f"modality {self.name!r}: only grids have a resolution of their own")
    if not self.roles:
      raise ValueError(f"modality {self.name!r}: needs at least one role")
    if self.kind == Kind.IMAGE_TOKENS and self.tokenizer is None:
      object.__setattr__(self, "tokenizer", GRID_TOKENIZER)
    if self.kind == Kind.SEQUENCE and self.tokenizer is None:
      raise ValueError(f"modality {self.name!r}: a sequence needs a tokenizer (its codec)")

  @property
  def is_grid(self) -> bool:
    return self.kind in (Kind.PIXELS, Kind.IMAGE_TOKENS, Kind.FEATURE_MAP)

  @property
  def positions(self) -> str:
    """'2d' sin-cos positions for grids, '1d' for sequences and global tokens,
    'learned' where the modality learns its own."""
    if self.learned_positions:
      return "learned"
    return "2d" if self.is_grid else "1d"

  @property
  def can_input(self) -> bool:
    return Role.INPUT in self.roles

  @property
  def can_target(self) -> bool:
    return Role.TARGET in self.roles

  @property
  def derived(self) -> bool:
    """A variant of another entry, derived on first use ("NAME@RES", "ret<k>_NAME",
    "src_NAME"): lookups of "the modality made from raw X" mean the base, never these."""
    return self.resolution is not None or input_variant_base(self.name) is not None

  @property
  def base_name(self) -> str:
    """The registry entry a resolution variant derives from ('tok_rgb@448' -> 'tok_rgb')."""
    return self.name.partition("@")[0]

  def image_size(self, layout: Layout) -> int:
    """The image size (px) a grid modality covers at this layout."""
    return self.resolution or layout.resolution

  def grid(self, layout: Layout) -> int:
    """Tokens per side of a grid modality at this layout."""
    if not self.is_grid:
      raise ValueError(f"modality {self.name!r} is not a grid")
    patch, size = self.patch_size or layout.patch_size, self.image_size(layout)
    if size % patch:
      raise ValueError(f"modality {self.name!r}: its {patch} px patches do not tile "
                       f"{size} px images")
    return size // patch

  def num_tokens(self, layout: Layout) -> int:
    """Tokens per sample at this layout (the maximum, for sequences)."""
    if self.is_grid:
      return self.grid(layout) ** 2
    return self.max_length

  def grid_shape(self, layout: Layout) -> tuple[int, int] | None:
    return (self.grid(layout),) * 2 if self.is_grid else None


# --------------------------------------------------------------------------------------
# Raw modalities of the 4M-7 set, plus instance ids (the synthetic world has them
# exactly; detection and instance tasks use them) and the sample key.
RGB = RawSpec("rgb", Form.IMAGE, "uint8", Values.COLOR, channels=3)
DEPTH = RawSpec("depth", Form.IMAGE, "float32", Values.DISTANCE, labeler="depth")
NORMAL = RawSpec("normal", Form.IMAGE, "float32", Values.DIRECTION, channels=3,
                 flip=Flip.NEGATE_X, labeler="normals")
SEMSEG = RawSpec("semseg", Form.IMAGE, "uint8", Values.CLASSES, resample=Resample.NEAREST,
                 labeler="semseg")
INSTANCE = RawSpec("instance", Form.IMAGE, "uint8", Values.INSTANCES,
                   resample=Resample.NEAREST)
CLIP = RawSpec("clip", Form.FEATURE_MAP, "float32", Values.FEATURES, labeler="clip")
DET = RawSpec("det", Form.BOXES, "boxes", Values.BOXES, labeler="det")
# Captions describe spatial relations, which a horizontal flip mirrors.
CAPTION = RawSpec("caption", Form.TEXT, "str", Values.TEXT, flip=Flip.SWAP_LEFT_RIGHT)
# The sample's name: the image's path relative to the ingested folder, or "train/000042"
# in the synthetic world. Jobs that fail on a sample report it.
KEY = RawSpec("key", Form.TEXT, "str", Values.NAME)
# An image-level class name (ImageNet's, or the synthetic world's largest object's): the
# target of classification fine-tuning, named so datasets need not agree on class ids.
LABEL = RawSpec("label", Form.TEXT, "str", Values.NAME)

GRID_TOKENIZER = "vqvae"
TEXT_VOCAB = 30_000               # the reference WordPiece vocabulary
SEQUENCE_MAX_LENGTH = 256

# The 4M-7 model modalities, vocab sizes as the reference trains them.
_4M7 = (
    ModalitySpec("rgb", Kind.PIXELS, RGB, roles=frozenset({Role.INPUT})),
    ModalitySpec("tok_rgb", Kind.IMAGE_TOKENS, RGB, vocab_size=16384),
    ModalitySpec("tok_depth", Kind.IMAGE_TOKENS, DEPTH, vocab_size=8192),
    ModalitySpec("tok_normal", Kind.IMAGE_TOKENS, NORMAL, vocab_size=8192),
    ModalitySpec("tok_semseg", Kind.IMAGE_TOKENS, SEMSEG, vocab_size=4096),
    ModalitySpec("tok_clip", Kind.IMAGE_TOKENS, CLIP, vocab_size=8192),
    # Both sequences are WordPiece ids; "boxes" serializes boxes as coordinate words.
    ModalitySpec("caption", Kind.SEQUENCE, CAPTION, vocab_size=TEXT_VOCAB,
                 tokenizer="text", max_length=SEQUENCE_MAX_LENGTH),
    ModalitySpec("det", Kind.SEQUENCE, DET, vocab_size=TEXT_VOCAB,
                 tokenizer="boxes", max_length=SEQUENCE_MAX_LENGTH),
)
MODALITY_SET_4M7 = tuple(spec.name for spec in _4M7)

# --------------------------------------------------------------------------------------
# What 4M-21 adds, with the reference's names, vocabularies and token layouts
# (apple/ml-4m, fourm/data/modality_info.py). Edges are binary class maps; the DINOv2 /
# ImageBind feature maps are at their 14 px patch grid, the global vectors one per image.
CANNY_EDGE = RawSpec("canny_edge", Form.IMAGE, "uint8", Values.CLASSES,
                     resample=Resample.NEAREST, labeler="canny_edge")
SAM_EDGE = RawSpec("sam_edge", Form.IMAGE, "uint8", Values.CLASSES, resample=Resample.NEAREST,
                   labeler="sam_edge")
DINOV2 = RawSpec("dinov2", Form.FEATURE_MAP, "float32", Values.FEATURES, channels=768,
                 labeler="dinov2")
IMAGEBIND = RawSpec("imagebind", Form.FEATURE_MAP, "float32", Values.FEATURES, channels=1280)
DINOV2_GLOBAL = RawSpec("dinov2_global", Form.VECTOR, "float32", Values.FEATURES, channels=768,
                        labeler="dinov2_global")
IMAGEBIND_GLOBAL = RawSpec("imagebind_global", Form.VECTOR, "float32", Values.FEATURES,
                           channels=1280)
# The caption's T5-XXL encoder states [L, 4096], one per text token.
T5_CAPTION = RawSpec("t5_caption", Form.VECTOR, "float32", Values.FEATURES, channels=4096,
                     labeler="t5_caption")
# Families of their own, serialized into the text vocabulary by a codec of the same name
# (the reference's value bins and special words).
HUMAN_POSES = RawSpec("human_poses", Form.VECTOR, "float32", "human_poses")
COLOR_PALETTE = RawSpec("color_palette", Form.VECTOR, "uint8", "color_palette", channels=3,
                        labeler="color_palette")
# A palette holds 1..COLOR_PALETTE_MAX colors (the reference precomputes one of each size).
COLOR_PALETTE_MAX = 7
METADATA = RawSpec("metadata", Form.VECTOR, "float32", "metadata", labeler="metadata")
# What a metadata record's 21 numbers are, in order (NaN where absent); the order is the
# reference's, each kind's "v1=" id in the text (tokenizers_vq/metadata.py).
METADATA_KEYS = (
    "original_width", "original_height", "caption_n_chars", "caption_n_words",
    "caption_n_sentences", "n_humans", "n_sam_instances", "n_coco_instances",
    "coco_instance_diversity", "colorfulness", "brightness", "contrast", "saturation",
    "entropy", "walkability", "objectness", "semantic_diversity", "geometric_complexity",
    "occlusion_score", "watermark_score", "aesthetic_score")
SAM_INSTANCE = RawSpec("sam_instance", Form.VECTOR, "int32", "sam_instance")

_SHARED_TEXT = dict(vocab_size=TEXT_VOCAB)  # the reference's `shared_vocab: [caption]`
_4M21_EXTRA = (
    ModalitySpec("tok_canny_edge", Kind.IMAGE_TOKENS, CANNY_EDGE, vocab_size=8192),
    ModalitySpec("tok_sam_edge", Kind.IMAGE_TOKENS, SAM_EDGE, vocab_size=8192),
    ModalitySpec("tok_dinov2", Kind.IMAGE_TOKENS, DINOV2, vocab_size=8192, patch_size=14),
    ModalitySpec("tok_imagebind", Kind.IMAGE_TOKENS, IMAGEBIND, vocab_size=8192,
                 patch_size=14),
    # 16 tokens of a global vector, with positions of their own (learned).
    ModalitySpec("tok_dinov2_global", Kind.GLOBAL, DINOV2_GLOBAL, vocab_size=8192,
                 max_length=16, learned_positions=True),
    ModalitySpec("tok_imagebind_global", Kind.GLOBAL, IMAGEBIND_GLOBAL, vocab_size=8192,
                 max_length=16, learned_positions=True),
    ModalitySpec("t5_caption", Kind.SEQUENCE_EMBEDDINGS, T5_CAPTION, max_length=77,
                 roles=frozenset({Role.INPUT})),
    # Lengths are the reference embeddings' max_length (human_poses' masking keeps up to
    # 275 tokens there, but positions past 263 all read position 0; fourm stops at 263).
    ModalitySpec("human_poses", Kind.SEQUENCE, HUMAN_POSES, tokenizer="human_poses",
                 max_length=263, **_SHARED_TEXT),
    ModalitySpec("color_palette", Kind.SEQUENCE, COLOR_PALETTE, tokenizer="color_palette",
                 max_length=23, **_SHARED_TEXT),
    ModalitySpec("metadata", Kind.SEQUENCE, METADATA, tokenizer="metadata", max_length=40,
                 **_SHARED_TEXT),
    ModalitySpec("sam_instance", Kind.SEQUENCE, SAM_INSTANCE, tokenizer="sam_instance",
                 max_length=290, **_SHARED_TEXT),
)
# The published 4M-21 models' modalities, in the order of the reference's configs.
MODALITY_SET_4M21 = (
    "rgb", "caption", "t5_caption", "det", "metadata", "tok_rgb", "tok_normal", "tok_depth",
    "tok_semseg", "tok_clip", "human_poses", "tok_dinov2", "tok_dinov2_global",
    "tok_imagebind", "tok_imagebind_global", "tok_sam_edge", "tok_canny_edge",
    "color_palette", "sam_instance")

# What the 4M-21 labelers write where a model modality's record needs a second network:
# the labels are the inputs that network reads.
# * sam_instance_masks, int32 [R, 22 + 64*64] (pseudolabel/sam.py): a sam_instance record
#   whose 16 token columns are -1, each row followed by its instance's 64 x 64 mask in its
#   box. A SAM-instance tokenizer (the reference's 64 x 64 mask VQ-VAE, converted by
#   `fourm convert --from reference`; raw modality sam_mask below) turns the masks into
#   the ids: `tokenizers_vq.sam_instance.tokenize_records` makes the sam_instance records.
# * human_keypoints, float32 [N, 56] (pseudolabel/human_poses.py): per person a box (as
#   human_poses' columns 0:4), the detector's score and 17 COCO keypoints (x, y, score).
#   The gap: a body model (HMR2.0's SMPL regressor) and the pose tokenizer, for the SMPL
#   columns of human_poses.
SAM_INSTANCE_MASKS = RawSpec("sam_instance_masks", Form.VECTOR, "int32", "sam_instance_masks",
                             labeler="sam_instance")
HUMAN_KEYPOINTS = RawSpec("human_keypoints", Form.VECTOR, "float32", "human_keypoints",
                          labeler="human_keypoints")
# One SAM instance's mask inside its box, uint8 [64, 64] of 0 / 1: what the reference's
# SAM-instance tokenizer (EPFL-VILAB/4M_tokenizers_sam-instance_1k_64, its "sam_mask")
# reads and writes, 4 x 4 = 16 ids per mask. The ids go into sam_instance rows; no model
# modality reads masks (pseudolabel/sam.py's `tokenize_records` fills them in).
SAM_MASK = RawSpec("sam_mask", Form.IMAGE, "uint8", Values.CLASSES, resample=Resample.NEAREST)

# An instruction written beside the inputs ("make the red cube blue", "segment the
# spheres", "what is left of the red cone?"): a text the model reads, never predicts
# (CM3leon's instruction tuning; the synthetic world's tasks: docs/instructions.md). Its
# spatial words mirror with the image.
INSTRUCTION = RawSpec("instruction", Form.TEXT, "str", Values.TEXT, flip=Flip.SWAP_LEFT_RIGHT)
_INSTRUCTIONS = (
    ModalitySpec("instruction", Kind.SEQUENCE, INSTRUCTION, vocab_size=TEXT_VOCAB,
                 tokenizer="text", max_length=32, roles=frozenset({Role.INPUT})),
)

# Raw modalities stored in records without a model modality of their own (yet).
_RAW_ONLY = (INSTANCE, KEY, LABEL, SAM_INSTANCE_MASKS, HUMAN_KEYPOINTS, SAM_MASK)

# Keys a batch carries beside its modalities; no modality may take these names.
RESERVED_NAMES = frozenset({"meta"})

MODALITIES: dict[str, ModalitySpec] = {}
RAW_MODALITIES: dict[str, RawSpec] = {}


def register_raw(raw: RawSpec) -> RawSpec:
  """Adds a raw modality; re-registering the same name must describe the same thing."""
  if raw.name in RESERVED_NAMES:
    raise ValueError(f"{raw.name!r} is reserved for batch metadata")
  known = RAW_MODALITIES.get(raw.name)
  if known is not None and known != raw:
    raise ValueError(f"raw modality {raw.name!r} is already registered as {known}; "
                     f"refusing a different definition {raw}")
  RAW_MODALITIES[raw.name] = raw
  return raw


def register(spec: ModalitySpec) -> ModalitySpec:
  """Adds a model modality (and its raw source). Names are unique."""
  if spec.name in RESERVED_NAMES:
    raise ValueError(f"{spec.name!r} is reserved for batch metadata")
  if spec.name in MODALITIES and MODALITIES[spec.name] != spec:
    raise ValueError(f"modality {spec.name!r} is already registered")
  register_raw(spec.source)
  MODALITIES[spec.name] = spec
  return spec


def unregister(name: str) -> None:
  """Removes a model modality (tests and experiments); its raw source stays."""
  MODALITIES.pop(name, None)


for _spec in _4M7 + _4M21_EXTRA + _INSTRUCTIONS:
  register(_spec)
for _raw in _RAW_ONLY:
  register_raw(_raw)


def with_vocab_size(spec: ModalitySpec, vocab_sizes: Mapping[str, int]) -> ModalitySpec:
  """`spec` with the vocabulary a run gives it (`vocab_sizes[spec.name]`), if any: a
  model whose tokenizer has fewer codes than the registry's default (a 128-bin depth
  quantizer, a 1,024-code VQ-VAE, a small text vocabulary) needs no table rows, and no
  logits, for the rest."""
  size = vocab_sizes.get(spec.name)
  base = input_variant_base(spec.name)
  if size is None and base is not None:  # a retrieved document's or an edit source's: its base's
    size = vocab_sizes.get(base)
  if size is None:
    return spec
  if spec.vocab_size is None:
    raise ValueError(f"modality {spec.name!r} is continuous: it has no vocabulary to resize")
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"modality {spec.name!r}: vocabulary size {size!r}, expected an int >= 1")
  return dataclasses.replace(spec, vocab_size=size)


def get(name: str, vocab_sizes: Mapping[str, int] | None = None) -> ModalitySpec:
  """The spec of `name`; "NAME@RES" derives (and registers) a grid's resolution variant.
  With `vocab_sizes` (a run's `config.model.vocab_sizes`), the vocabulary that run gives
  it (`with_vocab_size`)."""
  if vocab_sizes:
    return with_vocab_size(get(name), vocab_sizes)
  spec = MODALITIES.get(name)
  if spec is not None:
    return spec
  base, at, resolution = name.partition("@")
  if at and base in MODALITIES and resolution.isdigit() and int(resolution) > 0:
    return at_resolution(base, int(resolution))
  document = retrieved_base(name)
  if document is not None and document[1] in MODALITIES:
    return retrieved(document[1], document[0])
  source = edit_source_base(name)
  if source is not None and source in MODALITIES:
    return edit_source(source)
  raise KeyError(f"unknown modality {name!r}; known: {sorted(MODALITIES)} (and a grid's "
                 "NAME@RESOLUTION, a retrieved document's ret<K>_NAME, an edit's source "
                 "src_NAME)")


def is_known(name: str) -> bool:
  """Whether `get(name)` gives a spec (a resolution variant counts)."""
  try:
    get(name)
  except (KeyError, ValueError):
    return False
  return True


def at_resolution(name: str, resolution: int) -> ModalitySpec:
  """Grid modality `name` fixed at `resolution` px, registered as "name@resolution".

  The variant has the base's vocabulary, tokenizer family and raw source (a record's
  "rgb" serves rgb@448 too, resized), but embeddings of its own in a model: the
  reference's super-resolution model reads tok_rgb@224 and tok_rgb@448 side by side."""
  base = get(name)
  if not base.is_grid or base.resolution is not None:
    raise ValueError(f"modality {name!r}: only a registered grid modality has resolution "
                     "variants")
  return register(dataclasses.replace(base, name=f"{name}@{resolution}",
                                      resolution=resolution))


# Retrieved documents (fourm/retrieval/): the K-th document retrieved for a sample is
# shown to the encoder as "ret<K>_<name>" for each of its modalities, with the kinds
# whose values a record holds as they are (token grids, global tokens, sequences).
RETRIEVABLE_KINDS = (Kind.IMAGE_TOKENS, Kind.GLOBAL, Kind.SEQUENCE)
_RETRIEVED = re.compile(r"ret([1-9][0-9]*)_(.+)")


def retrieved(name: str, k: int) -> ModalitySpec:
  """Modality `name` of the k-th retrieved document (k >= 1), registered as
  "ret<k>_<name>": the base's kind, vocabulary, tokenizer family and length, an input
  only, with embeddings of its own in a model, so that the model tells the retrieved
  documents from the sample's own modalities and from each other."""
  base = get(name)
  if base.kind not in RETRIEVABLE_KINDS or retrieved_base(name) is not None:
    raise ValueError(f"modality {name!r}: retrieved documents carry token grids, global "
                     f"tokens or sequences, not {base.kind.value}")
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"retrieved document number {k!r}: expected an int >= 1")
  return _input_copy(base, f"ret{k}_{name}")


def retrieved_base(name: str) -> tuple[int, str] | None:
  """(k, base name) of a retrieved document's modality name "ret<k>_<base>", else None."""
  match = _RETRIEVED.fullmatch(name)
  return (int(match.group(1)), match.group(2)) if match else None


# An edit's source scene (instruction tuning, docs/instructions.md): "src_<name>" is the
# token grid `name` of the scene an instruction edits, read beside its image and
# instruction, so that the model copies what the edit keeps and changes what it asks, as
# CM3leon edits an image it reads as tokens. Without it the model would have to re-encode
# the whole scene from pixels before it could change one object.
_EDIT_SOURCE = re.compile(r"src_(.+)")


def edit_source(name: str) -> ModalitySpec:
  """Token grid `name` of an edit's source scene, registered as "src_<name>": the base's
  kind, vocabulary, tokenizer and raw modality (`fourm tokenize --tokenizers
  src_tok_rgb=DIR` tokenizes a record's rgb into it), an input only, with embeddings of
  its own in a model, so that the model tells the source from the answer's modality."""
  base = get(name)
  if base.kind != Kind.IMAGE_TOKENS or base.derived:
    raise ValueError(f"modality {name!r}: an edit's source is a registered token grid, not "
                     f"{'a derived ' + base.kind.value if base.derived else base.kind.value}")
  return _input_copy(base, f"src_{name}")


def edit_source_base(name: str) -> str | None:
  """The base name of an edit source's modality name "src_<base>", else None."""
  match = _EDIT_SOURCE.fullmatch(name)
  return match.group(1) if match else None


def input_variant_base(name: str) -> str | None:
  """The entry whose kind, vocabulary and tokenizer an input variant shares: a retrieved
  document's ("ret<k>_X") or an edit source's ("src_X") -> X; else None."""
  document = retrieved_base(name)
  return document[1] if document is not None else edit_source_base(name)


def _input_copy(base: ModalitySpec, name: str) -> ModalitySpec:
  return register(dataclasses.replace(base, name=name, roles=frozenset({Role.INPUT})))


def get_raw(name: str) -> RawSpec:
  try:
    return RAW_MODALITIES[name]
  except KeyError:
    raise KeyError(f"unknown raw modality {name!r}; known: {sorted(RAW_MODALITIES)}") from None


def grid_modality_of(raw_name: str) -> str:
  """The token-grid modality made from raw modality `raw_name` (rgb -> tok_rgb)."""
  found = [spec.name for spec in MODALITIES.values() if spec.kind == Kind.IMAGE_TOKENS
           and spec.source.name == raw_name and not spec.derived]
  if len(found) != 1:
    raise KeyError(f"raw modality {raw_name!r} has {len(found)} token-grid modalities "
                   f"{found}; expected one")
  return found[0]


def raws_with(values: str) -> list[RawSpec]:
  """The registered raw modalities whose values mean `values`, in registration order."""
  return [raw for raw in RAW_MODALITIES.values() if raw.values == values]


def labeler_outputs() -> dict[str, str]:
  """{pseudo-label task: the raw modality it writes}."""
  return {raw.labeler: raw.name for raw in RAW_MODALITIES.values() if raw.labeler}


def token_counts(names: Iterable[str], layout: Layout) -> dict[str, int]:
  """Tokens per sample for each named modality at `layout`."""
  return {name: get(name).num_tokens(layout) for name in names}


def describe(layout: Layout, names: Iterable[str] | None = None) -> str:
  """A table of the registry at a layout, for `fourm modalities` and the README."""
  names = list(MODALITIES) if names is None else list(names)
  header = (f"{'modality':<20} {'kind':<19} {'raw':<16} {'tokens':>6} {'vocab':>6}  "
            f"{'pos':<7} roles")
  rows = [header, "-" * len(header)]
  for name in names:
    spec = get(name)
    roles = "+".join(sorted(role.value for role in spec.roles))
    vocab = spec.vocab_size if spec.vocab_size is not None else "-"
    try:
      tokens = str(spec.num_tokens(layout))
    except ValueError:  # a grid whose patches do not tile this layout's images
      tokens = "-"
    rows.append(f"{name:<20} {spec.kind.value:<19} {spec.source.name:<16} "
                f"{tokens:>6} {vocab!s:>6}  {spec.positions:<7} {roles}")
  return "\n".join(rows)


def sources(names: Iterable[str]) -> Mapping[str, RawSpec]:
  """The raw modalities that the named model modalities need, by raw name."""
  return {get(name).source.name: get(name).source for name in names}
