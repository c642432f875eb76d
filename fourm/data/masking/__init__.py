"""Per-sample 4M masking: Dirichlet input/target budgets, span masking with sentinels.

`MaskSample(names, layout, input_budget, target_budget, mixture)` is the per-sample
transform the input pipeline runs after augmentation (`transform(sample, rng)`). It
turns a record into the masked-batch contract below, with numpy only (it runs in the
data loader, once per sample). The package by job: `budgets` (Dirichlet split),
`mixtures` (alphas, the reference YAML), `spans` (span masking), `cm3` (CM3's
causal-masked objective, an option for sequences), `entries` (a raw value -> what the
model reads, shared with generation's conditions), `transform` (MaskSample).

## The masked-batch contract (condensed from fourm/models/CONTRACT.md)

One sample is a dict keyed by modality name; `collate` later adds a leading batch axis.
Shapes depend only on the config, so the train step compiles once.

Dense modality (IMAGE_TOKENS, GLOBAL) with N tokens (grids flattened row-major):
  "tokens" int32 [N], "input_mask" bool [N], "target_mask" bool [N]; the two masks
  never overlap.
PIXELS (rgb): "tokens" float32 [R, R, 3], "input_mask" bool [N] over its patches,
  "target_mask" all False [N].
FEATURE_MAP: "tokens" float32 [N, D], "input_mask" bool [N], "target_mask" all False.
SEQUENCE (caption, det), L = spec.max_length, all right-padded with PAD:
  "input_tokens" int32 [L]   the visible text, one sentinel in place of each masked span
  "input_mask" bool [L]      True on the non-padding positions of input_tokens
  "target_tokens" int32 [L]  decoder inputs (teacher forcing): each span after its sentinel
  "target_labels" int32 [L]  what each decoder position predicts: the next token
  "target_mask" bool [L]     True on the decoder positions that carry a prediction
Budgets: the input_mask sums over modalities == input_budget and the target_mask sums ==
target_budget, unless the sample has fewer tokens to give (then as many as it has).
Text ids: PAD=0, UNK=1, SOS=2, EOS=3, sentinels [S_i] = 4 + i (`TextSpecialIds`).

Example, text "a red cube left of a blue sphere ." with "red" and "left of a blue sphere"
masked (spans are numbered from [S_1] and the target is closed by the next sentinel,
as in the reference):
  input_tokens  a [S_1] cube [S_2] . [EOS]
  target_tokens [S_1] red [S_2] left of a blue sphere
  target_labels red [S_2] left of a blue sphere [S_3]

## What it does, and where it follows apple/ml-4m (its fourm/data/masking.py, UnifiedMasking)

* A mixture component is drawn by `sampling_weights` (uniformly without), then input
  and target proportions ~ Dirichlet(alphas). Counts are floor(budget * proportions);
  the few tokens the floors leave go one at a time to the argmax of further Dirichlet
  draws (`input_token_budget`, `target_token_budget`), which slightly favours the
  largest alphas (~1 pp of a 64-token budget). Alphas of 0 are left out of the
  Dirichlet altogether (the reference clamps them to 1e-9 instead, which almost always,
  but not always, gives them nothing).
* Per-modality caps: what the sample actually has. Dense targets can only take tokens
  the inputs left (`max_tokens_remaining`). Unlike the reference, which clamps and drops
  the excess, what a cap leaves over goes to the modalities that still have room, in
  proportion to the draw; so does what a sequence's span masking does not use.
* Dense modalities: n_in random positions are the input, n_tg positions drawn from the
  remaining ones are the target (`image_mask`).
* Sequences: the text's ids get [EOS] appended (the tokenizer adds no [SOS]); each token
  is kept with probability keep_prob (`keep`: 'random' ~ U(0, 1), 'all' = 1, 'binary'
  = 0 or 1); runs of masked tokens become spans; keep_prob is multiplied by 0.9, masks
  redrawn, until the input fits its budget. A zero input budget puts the whole text in
  the target. The decoder sequence is [S_1] span_1 [S_2] ... span_k [S_k+1]; the decoder
  predicts each token from the previous ones (4M's `cat_decoder_tensors`: inputs
  ids[:-1], labels ids[1:]). A target over budget is cut to a window starting at a
  random sentinel, or else the longest suffix starting at a sentinel that fits
  (`sequence_mask`, `simple_span_masking`).
* RGB pixels become (x / 255 - mean) / std, with the ImageNet mean/std by default, as
  the reference 4M models are trained (`RGBTransform(imagenet_default_mean_and_std=True)`);
  `pixel_normalization="inception"` (mean = std = 0.5) gives [-1, 1].

Deliberate deviations from the reference:
* A sequence's target budget counts decoder predictions (target_mask.sum()), as the
  contract says; the reference counts the decoder tokens including the last one, which
  only ever serves as a label (one wasted decoder slot per sequence).
* Texts are cut to L - 1 tokens (with [EOS]; the reference cuts to L) so that the fully
  masked target, [S_1] text [S_2], still fits the L decoder positions. A warning says
  so, once per modality.
"""

from fourm.data.masking.budgets import allocate, draw_proportions, redistribute, split_budget
from fourm.data.masking.cm3 import NO_LOSS, Cm3Objective
from fourm.data.masking.entries import ValueReader
from fourm.data.masking.mixtures import AlphasMixture, DirichletComponent
from fourm.data.masking.spans import (FIRST_SPAN, KEEP_PROB_DECAY, KEEP_SCHEMES,
                                      choose_keep_mask, input_length, span_mask,
                                      truncate_target)
from fourm.data.masking.transform import MaskSample

__all__ = ["FIRST_SPAN", "KEEP_PROB_DECAY", "KEEP_SCHEMES", "NO_LOSS", "AlphasMixture",
           "Cm3Objective", "ValueReader", "DirichletComponent", "MaskSample", "allocate",
           "choose_keep_mask", "draw_proportions", "input_length", "redistribute",
           "span_mask", "split_budget", "truncate_target"]
