"""What a plain supervised model reaches on the synthetic world in a CPU-minute budget.

    python benchmarks/supervised_baseline.py --data demo_out/world [--seconds 180]

Issue 20 asks what the demo's 4M model should be able to learn in its time: this trains a
small fully convolutional net (three stride-2 conv stages down, three up with skips,
--width 16: 243 k parameters) from rgb to semantic segmentation, per pixel, on the world's
training split for a fixed wall-clock budget (batch 32, Adam 1e-3), and scores the
held-out split with the measures issue 20 names: mIoU over the object classes, pixel
accuracy, and the per-pixel-majority baseline beside them. Prints one table.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fourm.data import records
from fourm.data.synthetic import CLASSES
from fourm.generation import evaluate


class ConvNet(nnx.Module):
  """rgb [B, R, R, 3] -> class logits [B, R, R, K]: a small U-Net."""

  def __init__(self, num_classes: int, width: int = 32, *, rngs: nnx.Rngs):
    conv = lambda cin, cout, stride=1: nnx.Conv(cin, cout, (3, 3), strides=stride,
                                               padding="SAME", rngs=rngs)
    self.stem = conv(3, width)
    self.down = nnx.List([conv(width * 2 ** i, width * 2 ** (i + 1), 2) for i in range(3)])
    self.up = nnx.List([conv(width * 2 ** (i + 1) + width * 2 ** i, width * 2 ** i)
                        for i in reversed(range(3))])
    self.head = nnx.Conv(width, num_classes, (1, 1), rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu(self.stem(x))
    skips = [h]
    for layer in self.down:
      h = jax.nn.relu(layer(h))
      skips.append(h)
    skips.pop()
    for layer in self.up:
      skip = skips.pop()
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
      h = jax.nn.relu(layer(jnp.concatenate([h, skip], axis=-1)))
    return self.head(h)


def load(data: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  source = records.RecordSource([data], split)
  rgb = np.stack([source[i]["rgb"] for i in range(len(source))])
  semseg = np.stack([source[i]["semseg"] for i in range(len(source))])
  return (rgb.astype(np.float32) / 127.5 - 1.0), semseg.astype(np.int32)


def scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
  return {"object mIoU": evaluate.miou(pred, target, evaluate.OBJECT_CLASS_IDS),
          "pixel accuracy": float(np.mean(pred == target))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="demo_out/world")
  parser.add_argument("--seconds", type=float, default=180.0)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--width", type=int, default=16)
  args = parser.parse_args()
  train_x, train_y = load(args.data, "train")
  val_x, val_y = load(args.data, "val")
  model = ConvNet(len(CLASSES), args.width, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  predict = nnx.jit(lambda model, x: jnp.argmax(model(x), axis=-1))
  rng = np.random.default_rng(0)
  start, steps = time.perf_counter(), 0
  while time.perf_counter() - start < args.seconds:
    index = rng.integers(0, len(train_x), args.batch)
    step(model, optimizer, jnp.asarray(train_x[index]), jnp.asarray(train_y[index]))
    steps += 1
  pred = np.concatenate([np.asarray(predict(model, jnp.asarray(val_x[i:i + 50])))
                         for i in range(0, len(val_x), 50)])
  # The per-pixel majority over the training split: a model that never looks at the image.
  counts = np.stack([(train_y == k).sum(0) for k in range(len(CLASSES))])
  majority = np.broadcast_to(counts.argmax(0), val_y.shape)
  print(f"rgb -> semseg on {len(val_x)} held-out scenes, {steps} steps of batch "
        f"{args.batch} in {time.perf_counter() - start:.0f} s")
  print(f"{'model':<28} {'object mIoU':>12} {'pixel acc':>10}")
  for name, p in (("conv net", pred), ("per-pixel majority", majority)):
    s = scores(p, val_y)
    print(f"{name:<28} {s['object mIoU']:>12.3f} {s['pixel accuracy']:>10.3f}")


if __name__ == "__main__":
  main()
