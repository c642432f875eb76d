"""The 4M masking sampler: Dirichlet budgets, the mixture, span masking, the contract.

Every statistical test runs from a fixed seed, so it is deterministic; its tolerance is
several standard errors wide, so that a correct sampler passes for essentially any seed
while the plausible mistakes (uniform splits, ignored weights) miss by far more.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from fourm import modalities
from fourm.data import masking
from fourm.data.masking import AlphasMixture, DirichletComponent, MaskSample
from tokenizers_vq.text import TextSpecialIds
from fourm.data.pipeline import collate
from fourm.errors import RecordError, UsageError
from tests.helpers import registered_modalities
from tests.test_model import NAMES as MODEL_NAMES
from tests.test_model import TEST_FEATURES, TEST_GLOBAL, random_batch

Kind = modalities.Kind
SMALL = modalities.SMALL_LAYOUT
IDS = TextSpecialIds()
FIRST_WORD = IDS.first_sentinel + IDS.num_sentinels  # the first ordinary text id
DENSE3 = ("tok_rgb", "tok_depth", "tok_normal")


@pytest.fixture(scope="module")
def test_modalities():
  """The test-only GLOBAL and FEATURE_MAP modalities of test_model, so every kind runs."""
  with registered_modalities(TEST_GLOBAL, TEST_FEATURES):
    yield


# Builders ------------------------------------------------------------------------------------


def text_ids(length: int, rng: np.random.Generator) -> np.ndarray:
  """Distinct ordinary word ids, so a masked text can be aligned with its original."""
  return (FIRST_WORD + rng.permutation(2000)[:length]).astype(np.int32)


def make_sample(names, rng: np.random.Generator, layout=SMALL, caption_length: int = 15,
                det_length: int = 30, drop=()) -> dict:
  """A valid augmented record for `names`, without the modalities in `drop`."""
  sample = {}
  for name in names:
    spec = modalities.get(name)
    if name in drop:
      continue
    if spec.kind == Kind.PIXELS:
      sample[spec.source.name] = rng.integers(0, 256, (layout.resolution, layout.resolution, 3),
                                              dtype=np.uint8)
    elif spec.kind == Kind.FEATURE_MAP:
      sample[spec.source.name] = rng.normal(
          size=(layout.grid, layout.grid, spec.source.channels)).astype(np.float32)
    elif spec.kind == Kind.SEQUENCE:
      sample[name] = text_ids(caption_length if name == "caption" else det_length, rng)
    elif spec.kind == Kind.IMAGE_TOKENS:
      sample[name] = rng.integers(0, spec.vocab_size, (layout.grid, layout.grid)).astype(np.int32)
    else:
      sample[name] = rng.integers(0, spec.vocab_size, spec.num_tokens(layout)).astype(np.int32)
  return sample


def single(names, input_alphas, target_alphas, keep=None) -> AlphasMixture:
  """A one-component mixture with the given alphas (in the order of `names`)."""
  return AlphasMixture((DirichletComponent(dict(zip(names, input_alphas)),
                                           dict(zip(names, target_alphas)), keep or {}),))


def decoder_sequence(entry: dict) -> np.ndarray:
  """The decoder-side sequence a sequence entry encodes: its first input, then its labels."""
  predictions = int(entry["target_mask"].sum())
  if not predictions:
    return np.zeros(0, np.int32)
  return np.concatenate([entry["target_tokens"][:1], entry["target_labels"][:predictions]])


def reconstruct(entry: dict) -> list[int]:
  """The original text from the encoder sequence and the (untruncated) decoder one."""
  inputs = entry["input_tokens"][entry["input_mask"]]
  if inputs.size == 0:  # no input at all: the reference makes the whole text span [S_1]
    inputs = np.array([IDS.sentinel(1)])
  spans, current = {}, None
  for token in decoder_sequence(entry):
    if IDS.is_sentinel(token):
      current = int(token)
      spans[current] = []
    else:
      spans[current].append(int(token))
  text = []
  for token in inputs:
    text.extend(spans[int(token)] if IDS.is_sentinel(token) else [int(token)])
  return text


def full_target(original: np.ndarray, inputs: np.ndarray) -> np.ndarray:
  """The untruncated decoder sequence implied by an original text (distinct ids) and its
  encoder sequence: each sentinel stands for the run of original tokens it replaced."""
  position = {int(token): i for i, token in enumerate(original)}
  target, next_original = [], 0
  for token in list(inputs) + [None]:
    if token is not None and not IDS.is_sentinel(token):
      next_original = position[int(token)] + 1
      continue
    if token is None:
      break
    # The sentinel's span runs up to the next kept token (or the end of the text).
    later = [position[int(t)] for t in inputs if not IDS.is_sentinel(t)
             and position[int(t)] > next_original]
    end = min(later) if later else len(original)
    target.append(int(token))
    target.extend(int(t) for t in original[next_original:end])
    next_original = end
  num_spans = sum(1 for t in inputs if IDS.is_sentinel(t))
  target.append(IDS.sentinel(num_spans + 1))
  return np.array(target, np.int32)


def assert_is_prefix_mask(mask: np.ndarray) -> None:
  count = int(mask.sum())
  assert mask[:count].all() and not mask[count:].any()


# TextSpecialIds ------------------------------------------------------------------------------


def test_text_special_ids_follow_the_reference_vocabulary():
  assert (IDS.pad, IDS.unk, IDS.sos, IDS.eos) == (0, 1, 2, 3)
  assert IDS.sentinel(0) == 4 and IDS.sentinel(199) == 203
  with pytest.raises(ValueError, match="S_200"):
    IDS.sentinel(200)
  assert list(IDS.is_sentinel(np.array([3, 4, 203, 204]))) == [False, True, True, False]


# split_budget --------------------------------------------------------------------------------


# The reference's way of placing the tokens the floors leave (argmax of fresh Dirichlet
# draws) favours the largest alpha: about half a token per sample moves to it, up to
# ~1 pp of a 64-token budget for skewed alphas, ~0.4 pp of 256. Hence 256 tokens here.
def test_split_budget_mean_shares_follow_the_alphas():
  alphas = np.array([1.0, 2.0, 0.5])
  rng = np.random.default_rng(0)
  budget = 256
  shares = np.array([split_budget_checked(budget, alphas, np.full(3, 1000), rng)
                     for _ in range(10_000)]) / budget
  # A share's std is <= 0.24 here, so its mean over 10,000 draws has std <= 0.25 pp.
  np.testing.assert_allclose(shares.mean(0), alphas / alphas.sum(), atol=0.01)


def split_budget_checked(budget, alphas, capacities, rng) -> np.ndarray:
  counts = masking.split_budget(budget, alphas, capacities, rng)
  assert counts.dtype.kind == "i" and (counts >= 0).all()
  return counts


def test_split_budget_totals_caps_and_zero_alphas_over_random_draws():
  rng = np.random.default_rng(1)
  for _ in range(3000):
    size = int(rng.integers(1, 7))
    alphas = rng.choice([0.0, 0.0, 0.01, 0.1, 1.0, 10.0, 1000.0], size)
    capacities = rng.integers(0, 40, size)
    budget = int(rng.integers(0, 120))
    counts = split_budget_checked(budget, alphas, capacities, rng)
    assert (counts <= capacities).all()
    assert (counts[alphas == 0] == 0).all()
    assert counts.sum() == min(budget, capacities[alphas > 0].sum())


def test_split_budget_is_deterministic_given_the_rng():
  alphas, capacities = np.array([0.1, 1.0, 0.0, 3.0]), np.array([5, 30, 30, 30])
  first = masking.split_budget(50, alphas, capacities, np.random.default_rng(7))
  again = masking.split_budget(50, alphas, capacities, np.random.default_rng(7))
  np.testing.assert_array_equal(first, again)


def test_capped_tokens_go_to_the_others_in_proportion_to_the_draw():
  # Modality 0 can take 2 tokens; its share must go to 1 and 2, whose alphas are equal:
  # on average they split the budget evenly.
  rng = np.random.default_rng(2)
  counts = np.array([masking.split_budget(60, np.array([5.0, 1.0, 1.0]),
                                          np.array([2, 100, 100]), rng)
                     for _ in range(4000)])
  assert (counts[:, 0] <= 2).all() and (counts.sum(1) == 60).all()
  assert abs(counts[:, 1].mean() - 29) < 1.0  # std of the mean ~ 0.3


# Mixtures -----------------------------------------------------------------------------------


def test_mixture_components_are_drawn_by_their_weights():
  components = [DirichletComponent({"tok_rgb": float(i + 1)}, {"tok_rgb": 1.0})
                for i in range(4)]
  mixture = AlphasMixture(tuple(components), weights=(1.0, 3.0, 0.0, 4.0))
  rng = np.random.default_rng(3)
  draws = 20_000
  counts = np.bincount([mixture.sample_index(rng) for _ in range(draws)], minlength=4)
  expected = np.array([1, 3, 0, 4]) / 8
  # 5 binomial standard errors: ignoring the weights (1/4 each) misses by 30 or more.
  tolerance = 5 * np.sqrt(expected * (1 - expected) / draws)
  assert counts[2] == 0  # a component of weight 0 is never drawn
  assert (np.abs(counts / draws - expected) <= tolerance).all(), counts / draws
  assert mixture.sample(np.random.default_rng(0)) in components


def test_mixture_without_weights_draws_uniformly():
  components = tuple(DirichletComponent({"tok_rgb": float(i + 1)}, {"tok_rgb": 1.0})
                     for i in range(3))
  mixture = AlphasMixture(components)
  rng = np.random.default_rng(4)
  fractions = np.bincount([mixture.sample_index(rng) for _ in range(9000)]) / 9000
  assert np.abs(fractions - 1 / 3).max() < 5 * np.sqrt(2 / 9 / 9000)


# The reference's mix_mod7_all2allmix_rgb2all_capbias.yaml (first four modalities).
REFERENCE_CONFIG = {
    "sampling_weights": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "alphas_mixture": {
        "rgb@224": {"input_alphas": [0.01, 0.1, 1.0, 10.0, 1000.0, 0.05],
                    "target_alphas": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]},
        "caption": {"input_alphas": [0.01, 0.1, 1.0, 10.0, 0.0, 5.0],
                    "target_alphas": [0.01, 0.1, 1.0, 10.0, 0.5, 0.5],
                    "keep": ["random", "random", "random", "random", "random", "all"]},
        "det": {"input_alphas": [0.01, 0.1, 1.0, 10.0, 0.0, 0.05],
                "target_alphas": [0.01, 0.1, 1.0, 10.0, 0.5, 0.5],
                "keep": ["random", "random", "random", "random", "random", "random"]},
        "tok_rgb@224": {"input_alphas": [0.01, 0.1, 1.0, 10.0, 0.0, 0.05],
                        "target_alphas": [0.01, 0.1, 1.0, 10.0, 0.5, 0.5]},
    },
}


def test_from_reference_config_reads_the_reference_structure():
  mixture = AlphasMixture.from_reference_config(REFERENCE_CONFIG)
  assert len(mixture.components) == 6 and mixture.weights == (1.0,) * 6
  assert set(mixture.names) == {"rgb", "caption", "det", "tok_rgb"}
  rgb2all = mixture.components[4]
  assert rgb2all.input_alphas == {"rgb": 1000.0, "caption": 0.0, "det": 0.0, "tok_rgb": 0.0}
  assert rgb2all.target_alphas["tok_rgb"] == 0.5
  assert mixture.components[5].keep == {"caption": "all", "det": "random"}

  # The other form: modalities at the top level, no weights (uniform draws).
  plain = AlphasMixture.from_reference_config(
      {"tok_rgb@224": {"input_alphas": [0.0, 0.5], "target_alphas": [0.5, 0.5]},
       "caption": {"input_alphas": [0.0, 0.5], "target_alphas": [0.5, 0.5]}},
      weights=[1.0, 3.0])
  np.testing.assert_allclose(plain.probabilities, [0.25, 0.75])
  assert plain.components[0].keep == {"caption": "random"}  # the reference's default


def test_from_reference_config_can_read_a_subset_of_the_modalities():
  mixture = AlphasMixture.from_reference_config(REFERENCE_CONFIG, names=["tok_rgb", "caption"])
  assert set(mixture.names) == {"tok_rgb", "caption"}
  with pytest.raises(UsageError, match="no entry for modalities \\['tok_depth'\\]"):
    AlphasMixture.from_reference_config(REFERENCE_CONFIG, names=["tok_rgb", "tok_depth"])


def _with(entry_changes: dict | None = None, **top) -> dict:
  """REFERENCE_CONFIG with some modality entries replaced and top-level keys changed."""
  config = {"sampling_weights": REFERENCE_CONFIG["sampling_weights"],
            "alphas_mixture": dict(REFERENCE_CONFIG["alphas_mixture"])}
  for key, entry in (entry_changes or {}).items():
    if entry is None:
      config["alphas_mixture"].pop(key)
    else:
      config["alphas_mixture"][key] = entry
  config.update(top)
  return config


SIX = [1.0] * 6


@pytest.mark.parametrize("config, message", [
    (_with({"det": {"input_alphas": SIX, "target_alphas": [1.0] * 5, "keep": ["random"] * 6}}),
     r"modality 'det': target_alphas has 5 entries, expected 6"),
    (_with({"tok_depth@224": {"input_alphas": [1.0] * 4, "target_alphas": [1.0] * 4}}),
     r"modality 'tok_depth@224': input_alphas has 4 entries, expected 6"),
    (_with({"tok_rgb@224": {"input_alphas": [1.0, -0.5, 1, 1, 1, 1], "target_alphas": SIX}}),
     r"modality 'tok_rgb@224': input_alphas\[1\] is -0.5"),
    (_with({"tok_rgb@224": {"input_alphas": ["a"] * 6, "target_alphas": SIX}}),
     r"modality 'tok_rgb@224': input_alphas\[0\] is 'a', expected a number"),
    (_with({"tok_rgb@224": {"input_alphas": SIX}}),
     r"modality 'tok_rgb@224': target_alphas is missing"),
    (_with({"tok_rgb@224": {"input_alphas": SIX, "target_alphas": SIX, "keep": ["all"] * 6}}),
     r"modality 'tok_rgb@224': keep only applies to sequence modalities"),
    (_with({"caption": {"input_alphas": SIX, "target_alphas": SIX,
                        "keep": ["random"] * 5 + ["some"]}}),
     r"modality 'caption': keep has \['some'\]"),
    (_with({"caption": {"input_alphas": SIX, "target_alphas": SIX, "keep": ["all"] * 2}}),
     r"modality 'caption': keep has 2 entries, expected 6"),
    (_with({"caption": {"input_alphas": SIX, "target_alphas": SIX, "input_alpha": SIX}}),
     r"modality 'caption': unknown fields \['input_alpha'\]"),
    (_with({"tok_nothing@224": {"input_alphas": SIX, "target_alphas": SIX}}),
     r"unknown modality 'tok_nothing'"),
    (_with({"tok_rgb@448": {"input_alphas": SIX, "target_alphas": SIX}}),
     r"modality 'tok_rgb' appears twice"),
    (_with(sampling_weights=[1.0, 1.0]),
     r"sampling_weights has 2 entries but the alphas have 6 mixture components"),
    (_with(sampling_weights=[1.0, 1.0, 1.0, -1.0, 1.0, 1.0]), r"sampling_weights\[3\] is -1.0"),
    (_with(sampling_weights=[0.0] * 6), r"sampling_weights are all 0"),
    (_with(extra=1), r"unexpected top-level keys \['extra'\]"),
    ({"sampling_weights": SIX, "tok_rgb": {}}, r"needs the per-modality alphas under"),
    ({"tok_rgb": [1.0]}, r"modality 'tok_rgb': expected a mapping"),
])
def test_from_reference_config_rejects_malformed_configs(config, message):
  with pytest.raises(UsageError, match=message):
    AlphasMixture.from_reference_config(config)


def test_from_reference_config_refuses_weights_given_twice():
  with pytest.raises(UsageError, match="weights given twice"):
    AlphasMixture.from_reference_config(REFERENCE_CONFIG, weights=SIX)


def test_components_respect_roles_and_check_their_values():
  component = DirichletComponent({"rgb": 1.0, "tok_rgb": 1.0}, {"rgb": 1.0, "tok_rgb": 1.0})
  assert component.target_alphas == {"rgb": 0.0, "tok_rgb": 1.0}  # pixels are input only
  with pytest.raises(UsageError, match="'tok_rgb': input alpha is inf"):
    DirichletComponent({"tok_rgb": float("inf")}, {"tok_rgb": 1.0})
  with pytest.raises(UsageError, match="input_alphas name"):
    DirichletComponent({"tok_rgb": 1.0}, {"tok_depth": 1.0})


def test_rgb_to_all_plus_all_to_all_takes_inputs_from_rgb_only_half_the_time():
  names = ("rgb", "tok_rgb", "tok_depth", "caption")
  mixture = AlphasMixture.rgb_to_all_plus_all_to_all(names)
  transform = MaskSample(names, SMALL, 32, 32, mixture)
  rng = np.random.default_rng(5)
  rgb_only = 0
  for seed in range(400):
    out = transform(make_sample(names, rng), np.random.default_rng(seed))
    inputs = {name: int(out[name]["input_mask"].sum()) for name in names}
    rgb_only += inputs["rgb"] == 32
    assert sum(inputs.values()) == 32
  assert 160 <= rgb_only <= 240  # ~200 draws of the rgb2all component (+ a rare all2all)
  with pytest.raises(UsageError, match="needs the 'rgb' modality"):
    AlphasMixture.rgb_to_all_plus_all_to_all(("tok_rgb",))


def test_sources_to_all_gives_each_source_alone_as_whole_input_a_third_of_the_time():
  names = ("rgb", "tok_rgb", "tok_depth", "caption")
  mixture = AlphasMixture.sources_to_all_plus_all_to_all(names, ("rgb", "caption"))
  transform = MaskSample(names, SMALL, 32, 32, mixture)
  rng = np.random.default_rng(5)
  rgb_only = caption_only = 0
  for seed in range(300):
    sample = make_sample(names, rng, caption_length=15)
    out = transform(sample, np.random.default_rng(seed))
    inputs = {name: int(out[name]["input_mask"].sum()) for name in names}
    targets = {name: int(out[name]["target_mask"].sum()) for name in names}
    rgb_only += inputs["rgb"] == 32
    if inputs["caption"] == 16 and sum(inputs.values()) == 16:  # the whole caption + [EOS]
      caption_only += 1
      assert targets["caption"] == 0 and sum(targets.values()) == 32
  assert 70 <= rgb_only <= 130 and 70 <= caption_only <= 130  # ~100 draws of each
  target_only = modalities.ModalitySpec(
      "test_target_only", Kind.GLOBAL,
      modalities.RawSpec("test_target_only_raw", modalities.Form.VECTOR, "float32", "vector"),
      vocab_size=8, max_length=2, roles=frozenset({modalities.Role.TARGET}))
  with registered_modalities(target_only), pytest.raises(UsageError, match="cannot be a source"):
    AlphasMixture.sources_to_all_plus_all_to_all(names + ("test_target_only",),
                                                 ("rgb", "test_target_only"))
  with pytest.raises(UsageError, match="needs the 'det' modality"):
    AlphasMixture.sources_to_all_plus_all_to_all(names, ("det",))


def test_sources_to_all_weights_set_how_often_each_component_is_drawn():
  names = ("rgb", "tok_rgb", "tok_depth", "caption")
  mixture = AlphasMixture.sources_to_all_plus_all_to_all(names, ("rgb", "caption"),
                                                         weights=(2, 1, 0))
  np.testing.assert_allclose(mixture.probabilities, [2 / 3, 1 / 3, 0])
  rng = np.random.default_rng(0)
  drawn = np.bincount([mixture.sample_index(rng) for _ in range(600)], minlength=3)
  assert drawn[2] == 0 and 340 <= drawn[0] <= 460  # ~400 rgb2all, never all2all
  with pytest.raises(UsageError, match="3 components"):
    AlphasMixture.sources_to_all_plus_all_to_all(names, ("rgb", "caption"), weights=(1, 1))


def test_train_config_alphas_weights_reach_the_mixture():
  from fourm import config as config_lib
  from fourm.train import loop
  config = config_lib.load_config("configs/tiny_synthetic.py", ["alphas.weights=3,1,0"])
  np.testing.assert_allclose(loop._alphas(config).probabilities, [0.75, 0.25, 0])
  config = config_lib.load_config("configs/tiny_synthetic.py:smoke", [])
  np.testing.assert_allclose(loop._alphas(config).probabilities, [1 / 3] * 3)  # () = equally


# MaskSample: budgets -------------------------------------------------------------------------


def test_mean_input_and_target_shares_follow_a_single_dirichlet():
  # 32 x 32 = 1024 tokens each, budgets of 256 (see the split_budget test for why so
  # many): no cap is ever hit, inputs or targets.
  layout, budget = modalities.Layout(resolution=256, patch_size=8), 256
  alphas_in, alphas_tg = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 3.0])
  transform = MaskSample(DENSE3, layout, budget, budget, single(DENSE3, alphas_in, alphas_tg))
  sample = make_sample(DENSE3, np.random.default_rng(0), layout=layout)
  rng = np.random.default_rng(6)
  shares_in, shares_tg = [], []
  for _ in range(10_000):
    out = transform(sample, rng)
    shares_in.append([out[name]["input_mask"].sum() / budget for name in DENSE3])
    shares_tg.append([out[name]["target_mask"].sum() / budget for name in DENSE3])
  # Within 1 percentage point; each mean has a standard error of at most 0.25 pp.
  np.testing.assert_allclose(np.mean(shares_in, 0), alphas_in / alphas_in.sum(), atol=0.01)
  np.testing.assert_allclose(np.mean(shares_tg, 0), alphas_tg / alphas_tg.sum(), atol=0.01)


BUDGET_NAMES = ("rgb", "tok_rgb", "tok_depth", "tok_normal", "caption", "det")


def test_budgets_are_used_in_full_unless_the_sample_runs_out_over_random_draws():
  rng = np.random.default_rng(7)
  input_budget, target_budget = 48, 48
  checked = 0
  for trial in range(1500):
    alphas_in = rng.choice([0.0, 0.0, 0.01, 0.1, 1.0, 10.0], len(BUDGET_NAMES))
    alphas_tg = rng.choice([0.0, 0.0, 0.01, 0.1, 1.0, 10.0], len(BUDGET_NAMES))
    if not (alphas_in > 0).any() or not (alphas_tg[1:] > 0).any():
      continue
    keep = {name: str(rng.choice(masking.KEEP_SCHEMES)) for name in ("caption", "det")}
    transform = MaskSample(BUDGET_NAMES, SMALL, input_budget, target_budget,
                           single(BUDGET_NAMES, alphas_in, alphas_tg, keep))
    drop = [name for name in BUDGET_NAMES if rng.random() < 0.3]
    sample = make_sample(BUDGET_NAMES, rng, caption_length=int(rng.integers(0, 40)),
                         det_length=int(rng.integers(0, 80)), drop=drop)
    out = transform(sample, np.random.default_rng(trial))
    check_budgets(out, sample, alphas_in, alphas_tg, input_budget, target_budget)
    checked += 1
  assert checked > 1000


def check_budgets(out, sample, alphas_in, alphas_tg, input_budget, target_budget):
  n_in = {name: int(out[name]["input_mask"].sum()) for name in BUDGET_NAMES}
  n_tg = {name: int(out[name]["target_mask"].sum()) for name in BUDGET_NAMES}
  full_in, full_tg = True, True  # every dense modality that could take more is full
  for name, alpha_in, alpha_tg in zip(BUDGET_NAMES, alphas_in, alphas_tg):
    entry, present = out[name], name in sample
    if alpha_in == 0 or not present:
      assert n_in[name] == 0, name
    if alpha_tg == 0 or not present:
      assert n_tg[name] == 0, name
    if modalities.get(name).kind == Kind.SEQUENCE:
      continue
    assert not (entry["input_mask"] & entry["target_mask"]).any()
    if present and alpha_in > 0:
      full_in &= n_in[name] == 64
    if present and alpha_tg > 0 and modalities.get(name).can_target:
      full_tg &= n_in[name] + n_tg[name] == 64
  assert sum(n_in.values()) == input_budget or (sum(n_in.values()) < input_budget and full_in)
  assert sum(n_tg.values()) == target_budget or (
      sum(n_tg.values()) < target_budget and full_tg)


def test_dense_totals_are_exactly_what_the_sample_has_when_it_has_too_little():
  names = ("tok_rgb", "tok_depth", "tok_normal")
  transform = MaskSample(names, SMALL, 100, 100, AlphasMixture.uniform(names))
  rng = np.random.default_rng(8)
  for seed in range(300):
    drop = [name for name in names if rng.random() < 0.5]
    sample = make_sample(names, rng, drop=drop)
    out = transform(sample, np.random.default_rng(seed))
    available = 64 * (3 - len(drop))
    n_in = sum(int(out[name]["input_mask"].sum()) for name in names)
    n_tg = sum(int(out[name]["target_mask"].sum()) for name in names)
    assert n_in == min(100, available)
    assert n_tg == min(100, available - n_in)


def test_zero_alphas_give_zero_tokens_for_every_kind():
  names = ("rgb", "tok_rgb", "tok_depth", "caption", "det")
  mixture = single(names, [1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0])
  transform = MaskSample(names, SMALL, 64, 64, mixture)
  rng = np.random.default_rng(9)
  for seed in range(500):
    out = transform(make_sample(names, rng), np.random.default_rng(seed))
    for name in ("tok_rgb", "caption"):
      assert not out[name]["input_mask"].any()
    for name in ("rgb", "tok_depth", "det"):
      assert not out[name]["target_mask"].any()


def test_dense_input_and_target_positions_never_overlap():
  names = ("tok_rgb", "tok_depth")
  transform = MaskSample(names, SMALL, 60, 60, AlphasMixture.uniform(names, 0.3, 0.3))
  rng = np.random.default_rng(10)
  union_sizes = []
  for seed in range(2000):
    out = transform(make_sample(names, rng), np.random.default_rng(seed))
    for name in names:
      assert not (out[name]["input_mask"] & out[name]["target_mask"]).any()
      union_sizes.append(int((out[name]["input_mask"] | out[name]["target_mask"]).sum()))
  assert max(union_sizes) == 64  # the test does reach crowded grids


# MaskSample: sequences -----------------------------------------------------------------------


def check_sequence_entry(entry: dict, length: int = 256) -> None:
  """Padding is PAD and unmasked; labels are the decoder inputs shifted by one."""
  for key in ("input_mask", "target_mask"):
    assert entry[key].shape == (length,)
    assert_is_prefix_mask(entry[key])
  assert (entry["input_tokens"][~entry["input_mask"]] == IDS.pad).all()
  for key in ("target_tokens", "target_labels"):
    assert (entry[key][~entry["target_mask"]] == IDS.pad).all()
  predictions = int(entry["target_mask"].sum())
  if predictions:
    np.testing.assert_array_equal(entry["target_tokens"][1:predictions],
                                  entry["target_labels"][:predictions - 1])
    assert IDS.is_sentinel(entry["target_tokens"][0])


def test_sequence_round_trip_reconstructs_the_text_with_eos():
  names = ("tok_rgb", "caption")
  transform = MaskSample(names, SMALL, 32, 128, AlphasMixture.uniform(names))
  rng = np.random.default_rng(11)
  seen_spans = set()
  for seed in range(1500):
    ids = text_ids(int(rng.integers(0, 40)), rng)
    out = transform({"tok_rgb": make_sample(names, rng)["tok_rgb"], "caption": ids},
                    np.random.default_rng(seed))
    entry = out["caption"]
    check_sequence_entry(entry)
    decoder = decoder_sequence(entry)
    if entry["target_mask"].any() or entry["input_mask"].any():
      # With a target budget this large nothing is cut: the text comes back whole.
      assert reconstruct(entry) == list(ids) + [IDS.eos]
    inputs = entry["input_tokens"][entry["input_mask"]]
    spans = int(IDS.is_sentinel(inputs).sum())
    seen_spans.add(spans)
    # Spans are numbered from [S_1]; the decoder closes with the next free sentinel.
    np.testing.assert_array_equal(inputs[IDS.is_sentinel(inputs)],
                                  [IDS.sentinel(1 + i) for i in range(spans)])
    if decoder.size:
      assert decoder[-1] == IDS.sentinel(max(spans, 1) + 1)
  assert {0, 1, 2, 3} <= seen_spans


def test_fully_masked_text_puts_eos_before_the_closing_sentinel():
  # Input alpha 0: no input budget, so the whole text is the target (the reference).
  names = ("tok_rgb", "caption")
  transform = MaskSample(names, SMALL, 16, 64, single(names, [1.0, 0.0], [0.0, 1.0]))
  ids = text_ids(9, np.random.default_rng(0))
  out = transform({"tok_rgb": np.zeros((8, 8), np.int32), "caption": ids},
                  np.random.default_rng(0))["caption"]
  assert not out["input_mask"].any()
  predictions = int(out["target_mask"].sum())
  assert predictions == len(ids) + 2  # [S_1] text [EOS] [S_2], less the last token
  np.testing.assert_array_equal(out["target_tokens"][:predictions],
                                [IDS.sentinel(1), *ids, IDS.eos])
  np.testing.assert_array_equal(out["target_labels"][:predictions],
                                [*ids, IDS.eos, IDS.sentinel(2)])


def test_keep_all_puts_the_whole_text_in_the_input():
  names = ("tok_rgb", "caption")
  transform = MaskSample(names, SMALL, 64, 64,
                         single(names, [0.0, 1.0], [1.0, 1.0], {"caption": "all"}))
  ids = text_ids(12, np.random.default_rng(0))
  for seed in range(50):
    out = transform({"tok_rgb": np.zeros((8, 8), np.int32), "caption": ids},
                    np.random.default_rng(seed))
    entry = out["caption"]
    np.testing.assert_array_equal(entry["input_tokens"][entry["input_mask"]],
                                  [*ids, IDS.eos])
    assert not entry["target_mask"].any()
    assert out["tok_rgb"]["target_mask"].sum() == 64  # its target budget went elsewhere


def test_keep_binary_gives_all_or_nothing():
  names = ("caption",)
  transform = MaskSample(names, SMALL, 64, 64, single(names, [1.0], [1.0], {"caption": "binary"}))
  ids = text_ids(10, np.random.default_rng(0))
  kinds = set()
  for seed in range(100):
    entry = transform({"caption": ids}, np.random.default_rng(seed))["caption"]
    inputs = list(entry["input_tokens"][entry["input_mask"]])
    assert inputs in ([*ids, IDS.eos], [IDS.sentinel(1)])
    kinds.add(len(inputs))
  assert kinds == {1, 11}


def test_a_small_input_budget_lowers_keep_prob_until_the_input_fits():
  names = ("caption",)
  transform = MaskSample(names, SMALL, 3, 200, AlphasMixture.uniform(names))
  rng = np.random.default_rng(12)
  for seed in range(300):
    ids = text_ids(int(rng.integers(5, 30)), rng)
    entry = transform({"caption": ids}, np.random.default_rng(seed))["caption"]
    assert 1 <= entry["input_mask"].sum() <= 3
    assert reconstruct(entry) == list(ids) + [IDS.eos]


def test_a_target_over_budget_is_cut_at_a_sentinel():
  names = ("caption",)
  rng = np.random.default_rng(13)
  cut = 0
  for seed in range(600):
    budget = int(rng.integers(1, 12))
    transform = MaskSample(names, SMALL, 40, budget, AlphasMixture.uniform(names))
    ids = text_ids(int(rng.integers(5, 35)), rng)
    entry = transform({"caption": ids}, np.random.default_rng(seed))["caption"]
    check_sequence_entry(entry)
    original = np.append(ids, IDS.eos)
    inputs = entry["input_tokens"][entry["input_mask"]]
    whole = full_target(original, inputs if inputs.size else np.array([IDS.sentinel(1)]))
    decoder = decoder_sequence(entry)
    if len(whole) - 1 <= budget:  # it fits (a lone closing sentinel predicts nothing)
      np.testing.assert_array_equal(decoder, whole if len(whole) > 1 else whole[:0])
      continue
    cut += 1
    predictions = len(decoder) - 1
    assert 0 < predictions <= budget
    starts = [i for i in np.flatnonzero(IDS.is_sentinel(whole))
              if np.array_equal(whole[i:i + len(decoder)], decoder)]
    assert starts, "the decoder sequence is not a window of the full target"
    # Either exactly the budget from a random sentinel, or a suffix that fits.
    assert predictions == budget or starts[-1] + len(decoder) == len(whole)
  assert cut > 100


def test_truncate_target_follows_the_reference_rule():
  s = IDS.sentinel
  target = np.array([s(1), 900, 901, 902, s(2), 903, s(3), 904, 905, s(4)], np.int32)
  rng = np.random.default_rng(0)
  windows = set()
  for _ in range(200):
    kept = masking.truncate_target(target, 3, rng)
    windows.add(tuple(kept))
  # From [S_1]: 4 tokens fit; from [S_2] ([S_2] 903 [S_3] 904) too; from [S_3] only the
  # suffix [S_3] 904 905 [S_4] fits, which is the earliest sentinel whose rest fits.
  assert windows == {(s(1), 900, 901, 902), (s(2), 903, s(3), 904), (s(3), 904, 905, s(4))}
  np.testing.assert_array_equal(masking.truncate_target(target, 9, rng), target)
  assert masking.truncate_target(target, 0, rng).size == 0


def test_long_texts_are_cut_to_max_length_with_a_warning():
  names = ("tok_rgb", "caption")
  tokens = np.zeros((8, 8), np.int32)
  transform = MaskSample(names, SMALL, 300, 300,
                         single(names, [0.0, 1.0], [1.0, 1.0], {"caption": "all"}))
  ids = text_ids(400, np.random.default_rng(0))
  with pytest.warns(UserWarning, match="'caption': texts longer than 255 tokens"):
    entry = transform({"tok_rgb": tokens, "caption": ids}, np.random.default_rng(0))["caption"]
  np.testing.assert_array_equal(entry["input_tokens"][entry["input_mask"]], ids[:255])
  # The fully masked case still fits: 255 tokens + 2 sentinels = 256 decoder predictions.
  transform = MaskSample(names, SMALL, 300, 300, single(names, [1.0, 0.0], [0.0, 1.0]))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    entry = transform({"tok_rgb": tokens, "caption": ids}, np.random.default_rng(0))["caption"]
  assert entry["target_mask"].all() and entry["target_labels"][-1] == IDS.sentinel(2)


def test_raw_text_goes_through_the_sequence_encoder():
  vocab = {"a": 300, "red": 301, "cube": 302, ".": 303}

  def encode(text: str) -> np.ndarray:
    return np.array([vocab[word] for word in text.split()], np.int32)

  names = ("caption",)
  transform = MaskSample(names, SMALL, 64, 64, single(names, [1.0], [1.0], {"caption": "all"}),
                         sequence_encoders={"caption": encode})
  entry = transform({"caption": "a red cube ."}, np.random.default_rng(0))["caption"]
  np.testing.assert_array_equal(entry["input_tokens"][:5], [300, 301, 302, 303, IDS.eos])
  bare = MaskSample(names, SMALL, 64, 64, AlphasMixture.uniform(names))
  with pytest.raises(UsageError, match="sequence_encoders\\['caption'\\]"):
    bare({"caption": "a red cube ."}, np.random.default_rng(0))


def test_trailing_padding_of_stored_ids_is_dropped_but_pad_inside_is_an_error():
  names = ("caption",)
  transform = MaskSample(names, SMALL, 64, 64, single(names, [1.0], [1.0], {"caption": "all"}))
  padded = np.array([300, 301, 0, 0, 0], np.int32)
  entry = transform({"caption": padded}, np.random.default_rng(0))["caption"]
  np.testing.assert_array_equal(entry["input_tokens"][entry["input_mask"]], [300, 301, IDS.eos])
  for bad in ([300, 0, 301], [300, IDS.sentinel(5)]):
    with pytest.raises(RecordError, match="field 'caption'.*sentinel"):
      transform({"caption": np.array(bad, np.int32)}, np.random.default_rng(0))


# MaskSample: the contract --------------------------------------------------------------------


def test_output_matches_the_model_batch_format_key_by_key(test_modalities):
  names = MODEL_NAMES
  transform = MaskSample(names, SMALL, 40, 40, AlphasMixture.uniform(names))
  reference = random_batch(names, batch_size=1)
  out = transform(make_sample(names, np.random.default_rng(0)), np.random.default_rng(0))
  assert set(out) == set(names)
  for name in names:
    assert set(out[name]) == set(reference[name]), name
    for key, expected in reference[name].items():
      assert out[name][key].dtype == expected.dtype, (name, key)
      assert out[name][key].shape == expected.shape[1:], (name, key)
  assert sum(out[name]["input_mask"].sum() for name in names) == 40
  assert sum(out[name]["target_mask"].sum() for name in names) == 40


def test_masked_samples_collate_into_model_batches(test_modalities):
  names = MODEL_NAMES
  transform = MaskSample(names, SMALL, 40, 40, AlphasMixture.uniform(names))
  rng = np.random.default_rng(1)
  samples = []
  for seed in range(3):
    sample = make_sample(names, rng, drop=["det"] if seed == 1 else ())
    sample["meta"] = {"record": np.int64(seed)}
    samples.append(transform(sample, np.random.default_rng(seed)))
  batch = collate(samples, max_boxes=4)
  reference = random_batch(names, batch_size=3)
  for name in names:
    for key, expected in reference[name].items():
      assert batch[name][key].shape == expected.shape and batch[name][key].dtype == expected.dtype
  np.testing.assert_array_equal(batch["meta"]["record"], [0, 1, 2])


def test_missing_modalities_get_empty_masks_and_pad_tokens(test_modalities):
  names = MODEL_NAMES
  transform = MaskSample(names, SMALL, 40, 40, AlphasMixture.uniform(names))
  # What is left (two 64-token grids, a caption) can fill both budgets.
  missing = ("rgb", "test_global", "det", "test_features")
  sample = make_sample(names, np.random.default_rng(0), drop=missing)
  sample["unrelated"] = "dropped"
  for seed in range(100):
    out = transform(sample, np.random.default_rng(seed))
    assert set(out) == set(names)  # only the configured modalities
    for name in missing:
      entry = out[name]
      assert not entry["input_mask"].any() and not entry["target_mask"].any()
      for key in ("tokens", "input_tokens", "target_tokens", "target_labels"):
        if key in entry:
          assert not entry[key].any(), (name, key)
    assert sum(out[name]["input_mask"].sum() for name in names) == 40
    assert sum(out[name]["target_mask"].sum() for name in names) == 40


def test_tokens_carry_the_sample_content():
  names = ("rgb", "tok_rgb")
  sample = make_sample(names, np.random.default_rng(0))
  sample["tok_rgb"] = np.arange(64, dtype=np.int64).reshape(8, 8)
  out = MaskSample(names, SMALL, 16, 16, AlphasMixture.uniform(names))(
      sample, np.random.default_rng(0))
  np.testing.assert_array_equal(out["tok_rgb"]["tokens"], np.arange(64))
  assert out["tok_rgb"]["tokens"].dtype == np.int32


@pytest.mark.parametrize("normalization, mean, std", [
    ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("inception", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
])
def test_rgb_pixels_are_normalized(normalization, mean, std):
  names = ("rgb", "tok_rgb")
  sample = make_sample(names, np.random.default_rng(0))
  transform = MaskSample(names, SMALL, 16, 16, AlphasMixture.uniform(names),
                         pixel_normalization=normalization)
  tokens = transform(sample, np.random.default_rng(0))["rgb"]["tokens"]
  expected = (sample["rgb"] / 255.0 - np.array(mean)) / np.array(std)
  assert tokens.dtype == np.float32
  np.testing.assert_allclose(tokens, expected, atol=1e-5)
  if normalization == "inception":
    assert tokens.min() >= -1 and tokens.max() <= 1


def test_feature_maps_become_one_vector_per_patch(test_modalities):
  names = ("test_features", "tok_rgb")
  sample = make_sample(names, np.random.default_rng(0))
  out = MaskSample(names, SMALL, 16, 16, AlphasMixture.uniform(names))(
      sample, np.random.default_rng(0))
  np.testing.assert_array_equal(out["test_features"]["tokens"],
                                sample["test_features_raw"].reshape(64, 12))
  assert not out["test_features"]["target_mask"].any()


def test_embedding_sequences_are_span_masked_inputs_as_the_reference_masks_them():
  """t5_caption: kept vectors in order, one zero vector per masked run, packed at the
  front; what the input budget allows; never a target."""
  names = ("t5_caption", "tok_rgb")
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(30, 4096)).astype(np.float32) + 5.0  # never zero
  sample = {"t5_caption": vectors,
            "tok_rgb": rng.integers(0, 16384, (8, 8)).astype(np.int32)}
  transform = MaskSample(names, SMALL, 12, 16, single(names, (1.0, 1.0), (0.0, 1.0)))
  seen_gaps = seen_kept = 0
  for seed in range(40):
    out = transform(sample, np.random.default_rng(seed))["t5_caption"]
    assert out["tokens"].shape == (77, 4096) and not out["target_mask"].any()
    assert_is_prefix_mask(out["input_mask"])
    packed = out["tokens"][out["input_mask"]]
    assert len(packed) <= 12
    assert not out["tokens"][~out["input_mask"]].any()
    gaps = ~packed.any(-1)
    assert not (gaps[1:] & gaps[:-1]).any()  # one placeholder per masked run
    kept = packed[~gaps]
    # The kept vectors are the sample's, in order.
    where = [int(np.flatnonzero((vectors == v).all(-1))[0]) for v in kept]
    assert where == sorted(where) and len(set(where)) == len(where)
    seen_gaps += int(gaps.sum())
    seen_kept += len(kept)
  assert seen_gaps and seen_kept  # both happen over the draws
  with pytest.raises(RecordError, match="t5_caption.*4096-d vectors"):
    transform({**sample, "t5_caption": vectors[:, :10]}, np.random.default_rng(0))


def test_same_sample_and_seed_give_the_same_masks():
  names = BUDGET_NAMES
  transform = MaskSample(names, SMALL, 48, 48, AlphasMixture.from_reference_config(
      REFERENCE_CONFIG | {"alphas_mixture": REFERENCE_CONFIG["alphas_mixture"] | {
          name: {"input_alphas": SIX, "target_alphas": SIX} for name in DENSE3[1:]}}))
  sample = make_sample(names, np.random.default_rng(0))
  first = transform(sample, np.random.default_rng([3, 4, 1]))
  again = transform(sample, np.random.default_rng([3, 4, 1]))
  other = transform(sample, np.random.default_rng([3, 5, 1]))
  same, differs = True, False
  for name in names:
    for key in first[name]:
      same &= np.array_equal(first[name][key], again[name][key])
      differs |= not np.array_equal(first[name][key], other[name][key])
  assert same and differs


def test_the_transform_pickles_for_grain_workers():
  names = ("rgb", "tok_rgb", "caption")
  transform = MaskSample(names, SMALL, 32, 32, AlphasMixture.from_reference_config(
      REFERENCE_CONFIG, names=names))
  copy = pickle.loads(pickle.dumps(transform))
  sample = make_sample(names, np.random.default_rng(0))
  a, b = transform(sample, np.random.default_rng(1)), copy(sample, np.random.default_rng(1))
  for name in names:
    for key in a[name]:
      np.testing.assert_array_equal(a[name][key], b[name][key])


# MaskSample: bad records and bad configs ----------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("tok_rgb", np.full((8, 8), 16384, np.int32), r"field 'tok_rgb': token id 16384 outside"),
    ("tok_rgb", np.full((8, 8), -1, np.int32), r"field 'tok_rgb': token id -1 outside"),
    ("tok_rgb", np.zeros((4, 4), np.int32), r"field 'tok_rgb': expected token ids of shape"),
    ("tok_rgb", np.zeros((8, 8), np.float32), r"field 'tok_rgb': expected integer token ids"),
    ("caption", np.array([300, 30000], np.int32), r"field 'caption': token id 30000 outside"),
    ("caption", np.zeros((2, 3), np.int32), r"field 'caption': expected a 1-D sequence"),
    ("rgb", np.zeros((32, 32, 3), np.uint8), r"field 'rgb': expected a uint8 image \[64, 64, 3\]"),
    ("rgb", np.zeros((64, 64, 3), np.float32), r"field 'rgb': expected uint8 pixels"),
])
def test_bad_records_raise_record_errors_naming_the_field(field, value, message):
  names = ("rgb", "tok_rgb", "caption")
  sample = make_sample(names, np.random.default_rng(0))
  sample[field] = value
  transform = MaskSample(names, SMALL, 32, 32, AlphasMixture.uniform(names))
  with pytest.raises(RecordError, match=message) as error:
    transform(sample, np.random.default_rng(0))
  assert error.value.field == field


def test_bad_configurations_raise_usage_errors():
  names = ("tok_rgb", "caption")
  uniform = AlphasMixture.uniform(names)
  with pytest.raises(UsageError, match="no alphas for \\['tok_depth'\\]"):
    MaskSample(("tok_rgb", "tok_depth"), SMALL, 8, 8, uniform)
  with pytest.raises(UsageError, match="unknown modality 'tok_nothing'"):
    MaskSample(("tok_nothing",), SMALL, 8, 8, uniform)
  with pytest.raises(UsageError, match="distinct modality names"):
    MaskSample(("tok_rgb", "tok_rgb"), SMALL, 8, 8, uniform)
  with pytest.raises(UsageError, match="input budget must be an int"):
    MaskSample(names, SMALL, -1, 8, uniform)
  with pytest.raises(UsageError, match="component 0 gives every modality .* target alpha 0"):
    MaskSample(names, SMALL, 8, 8, single(names, [1.0, 1.0], [0.0, 0.0]))
  with pytest.raises(UsageError, match="pixel_normalization"):
    MaskSample(names, SMALL, 8, 8, uniform, pixel_normalization="zscore")
  with pytest.raises(UsageError, match="sequence encoder given for 'tok_rgb'"):
    MaskSample(names, SMALL, 8, 8, uniform, sequence_encoders={"tok_rgb": len})
  with pytest.raises(UsageError, match="do not fit its vocabulary"):
    MaskSample(names, SMALL, 8, 8, uniform, text_ids=TextSpecialIds(num_sentinels=29_999))


def _mean_tokens(transform, sample, draws: int) -> tuple[dict, dict]:
  inputs, targets = {}, {}
  for seed in range(draws):
    out = transform(sample, np.random.default_rng(seed))
    for name in transform.names:
      inputs[name] = inputs.get(name, 0) + int(out[name]["input_mask"].sum()) / draws
      targets[name] = targets.get(name, 0) + int(out[name]["target_mask"].sum()) / draws
  return inputs, targets


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_reference_budget_rule_matches_the_references_own_masking():
  """The reference's UnifiedMasking on the 4M-7 recipe (tests/fixtures/reference/
  masking_stats.json, made by running it): its mean tokens per modality, which
  budget_rule="reference" reproduces and fourm's own rule does not."""
  import json
  import os
  with open(os.path.join(os.path.dirname(__file__), "fixtures", "reference",
                         "masking_stats.json")) as f:
    ref = json.load(f)
  names = modalities.MODALITY_SET_4M7
  rng = np.random.default_rng(0)
  sample = make_sample(names, rng, layout=modalities.REFERENCE_LAYOUT,
                       caption_length=ref["text_lengths_with_eos"]["caption"] - 1,
                       det_length=ref["text_lengths_with_eos"]["det"] - 1)
  mixture = AlphasMixture.rgb_to_all_plus_all_to_all(names, 0.5)
  domain = {n: n + "@224" if modalities.get(n).is_grid else n for n in names}
  dense = [n for n in names if modalities.get(n).kind == Kind.IMAGE_TOKENS]
  results = {}
  for rule in ("reference", "fourm"):
    transform = MaskSample(names, modalities.REFERENCE_LAYOUT, 128, 128, mixture,
                           budget_rule=rule)
    results[rule] = _mean_tokens(transform, sample, 1500)
  inputs, targets = results["reference"]
  # Standard errors: about 0.5 tokens here, 0.35 in the reference's 4000 draws.
  for name in dense:
    assert abs(targets[name] - ref["mean_target_tokens"][domain[name]]) < 1.8, name
  for name in names:
    assert abs(inputs[name] - ref["mean_input_tokens"][domain[name]]) < 1.8, name
  reference_dense = np.mean([ref["mean_target_tokens"][domain[n]] for n in dense])
  assert abs(np.mean([targets[n] for n in dense]) - reference_dense) < 0.8
  # fourm's own rule gives the dense modalities what the short texts leave: > 2 more.
  assert np.mean([results["fourm"][1][n] for n in dense]) > reference_dense + 2
  with pytest.raises(UsageError, match="budget_rule"):
    MaskSample(names, SMALL, 8, 8, mixture, budget_rule="nope")


def test_companions_share_every_source_component_inputs():
  names = ("tok_rgb", "caption", "ret1_tok_rgb", "ret1_caption")
  mixture = AlphasMixture.sources_to_all_plus_all_to_all(
      names, ("caption",), companions=("ret1_tok_rgb", "ret1_caption"))
  source = mixture.components[0]
  assert source.input_alphas == {"tok_rgb": 0.0, "caption": 1000.0, "ret1_tok_rgb": 1000.0,
                                 "ret1_caption": 1000.0}
  assert source.target_alphas["tok_rgb"] == 0.5 and source.target_alphas["caption"] == 0.0
  with pytest.raises(UsageError, match="companions"):
    AlphasMixture.sources_to_all_plus_all_to_all(names, ("caption",), companions=("det",))
