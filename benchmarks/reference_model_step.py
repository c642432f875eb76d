"""The reference's (apple/ml-4m) 4M tiny on model_step.py's workload: seconds per call.

Run in a virtualenv that can import apple/ml-4m at commit cda590f (CPU torch, numpy<2,
einops, ... as tests/fixtures/reference/make_reference_fixtures.py says). model_step.py
starts it itself when given `--reference ML4M_CHECKOUT --reference-python VENV/bin/python`,
so that both sides are timed in one run on the same machine; by hand:

    VENV/bin/python benchmarks/reference_model_step.py --ml4m ML4M_CHECKOUT --batch 8

The workload is model_step.py's: the reference's own `FM(config)` at the
`fm_tiny_6e_6d_swiglu_nobias` shape (dim 384, 6 + 6 blocks, 6 heads, SwiGLU, no biases),
domains tok_rgb and tok_depth (196 tokens each at 224 px) and caption (256), batch 8, 128
encoder + 128 decoder tokens split rgb 48 / depth 48 / caption 32, the "mod" loss, float32,
torch's threads set to the machine's cores. A training step is forward + backward +
AdamW (the reference recipe's betas and weight decay). Prints one JSON line:
{"forward_s": ..., "train_step_s": ..., "threads": ...}, medians after two warm-up calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

SPLIT = {"tok_rgb@224": 48, "tok_depth@224": 48, "caption": 32}
VOCAB = {"tok_rgb@224": 16384, "tok_depth@224": 8192, "caption": 30000}
GRID_TOKENS, CAPTION_LENGTH = 196, 256


def config() -> dict:
  return dict(domains_in=list(SPLIT), domains_out=list(SPLIT), encoder_depth=6,
              decoder_depth=6, dim=384, num_heads=6, mlp_ratio=4.0, qkv_bias=False,
              proj_bias=False, mlp_bias=False, norm_bias=False, act_layer="SiLU",
              gated_mlp=True, qk_norm=False, image_size=224, patch_size=16,
              share_modality_embeddings=True, decoder_causal_mask=False,
              decoder_sep_mask=True, num_register_tokens=0, use_act_checkpoint=False)


def allow_sampling_dict_views() -> None:
  """The reference calls `random.sample(mod_dict.items(), ...)`, which Python 3.11 refuses
  for a dict view (it targets 3.9); a list of the same items is what it meant."""
  import random
  sample = random.sample
  random.sample = lambda population, k, **kw: sample(
      list(population) if not isinstance(population, (list, tuple, range, str)) else
      population, k, **kw)


def mod_dict(torch, batch: int, seed: int = 0) -> dict:
  """The batch in the reference's layout: masks are True where a token is left out; a
  sequence holds its encoder tokens and then its decoder tokens in one tensor."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, n in SPLIT.items():
    if name == "caption":
      tensor = rng.integers(204, VOCAB[name], (batch, CAPTION_LENGTH))
      input_mask = np.ones((batch, CAPTION_LENGTH), bool)
      target_mask = np.ones((batch, CAPTION_LENGTH), bool)
      attention = np.zeros((batch, CAPTION_LENGTH), np.int32)
      input_mask[:, :n] = False
      target_mask[:, n:2 * n] = False
      attention[:, n:2 * n] = 1
    else:
      tensor = rng.integers(0, VOCAB[name], (batch, GRID_TOKENS))
      ranks = np.argsort(np.argsort(rng.uniform(size=(batch, GRID_TOKENS)), axis=1), axis=1)
      input_mask = ranks >= n
      target_mask = ~((ranks >= n) & (ranks < 2 * n))
      attention = np.zeros((batch, GRID_TOKENS), np.int32)
      first = np.argmax(~target_mask, axis=1)
      attention[np.arange(batch), first] = n
    out[name] = dict(tensor=torch.from_numpy(tensor.astype(np.int64)),
                     input_mask=torch.from_numpy(input_mask),
                     target_mask=torch.from_numpy(target_mask),
                     decoder_attention_mask=torch.from_numpy(attention))
  return out


def timed(fn, repeats: int) -> float:
  fn()
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ml4m", required=True, help="checkout of apple/ml-4m at cda590f")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  sys.path.insert(0, args.ml4m)
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                  "fixtures", "reference"))
  import torch
  from make_reference_fixtures import _stub_if_missing
  _stub_if_missing("torchvision", "cv2", "albumentations")
  from fourm.models.fm import FM  # the reference's, from --ml4m
  allow_sampling_dict_views()
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = FM(config=config())
  batch = mod_dict(torch, args.batch)
  tokens = sum(SPLIT.values())

  def forward():
    with torch.no_grad():
      model(batch, num_encoder_tokens=tokens, num_decoder_tokens=tokens, loss_type="mod")

  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                weight_decay=0.05)

  def train_step():
    loss, _ = model(batch, num_encoder_tokens=tokens, num_decoder_tokens=tokens,
                    loss_type="mod")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  model.eval()  # no dropout / drop path: the same arithmetic as fourm's step
  forward_s = timed(forward, args.repeats)
  step_s = timed(train_step, args.repeats)
  print(json.dumps({"forward_s": forward_s, "train_step_s": step_s, "threads": threads,
                    "torch": torch.__version__}))


if __name__ == "__main__":
  main()
