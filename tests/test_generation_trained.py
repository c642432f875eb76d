"""Generation from a model trained here: quality against trivial baselines, `fourm
generate` end to end, and the notebook, executed.

One small model is trained once for the module (synthetic world -> ground-truth patch
tokens -> `fourm.train`), about a minute on 2 cores; the tests of this module run
on one xdist worker (`make test`'s `--dist loadscope`, or `--dist loadgroup` by the
xdist_group mark) so it is trained once.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fourm import cli
from fourm import config as config_lib
from fourm.data import patch_tokens, world
from fourm.generation import evaluate, loading
from fourm.generation.evaluate import named_colors
from fourm.generation.generator import Generator, converted_from
from fourm.train import loop

# Every test here reads the model trained once for the module (about a
# minute): slow, like the notebook it executes.
pytestmark = [pytest.mark.xdist_group("trained_generation_model"), pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODALITIES = ("rgb", "tok_rgb", "tok_depth", "tok_semseg", "caption")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("generation")
  data, tokens, workdir = (str(root / name) for name in ("world", "tokens", "train"))
  world.write_world(data, 330, 64, seed=0, val_fraction=0.1, workers=1, progress=False,
                    log=lambda _: None)
  patch_tokens.write_patch_tokens(data, tokens, loading.modalities.SMALL_LAYOUT,
                                  ("tok_rgb", "tok_depth", "tok_semseg"), progress=False,
                                  log=lambda _: None)
  config = config_lib.load_config(os.path.join(REPO, "configs/tiny_synthetic.py:smoke"))
  config.modalities = MODALITIES
  config.data.paths = (data, tokens)
  # rgb -> all half of the time (the 4M-7 mixture), and a high learning rate: 150 steps
  # learn the scenes' layout, enough to beat the baselines that ignore the image.
  config.alphas.kind, config.alphas.alpha = "rgb2all_and_all2all", 0.5
  config.total_steps = 150
  config.batch_size = 16
  config.optimizer.base_lr = 0.032  # 2e-3 at batch 16
  config.optimizer.warmup_steps = 15
  config.eval_every = 0
  config.log_every = 50
  config.checkpoint.every = 150
  config.mesh.data = 1  # one device: 8 forced host devices on 2 cores only add overhead
  loop.train(config, workdir, log=lambda _: None)
  return {"data": data, "tokens": tokens, "workdir": workdir}


@pytest.fixture(scope="module")
def generator(trained):
  return Generator.from_checkpoint(trained["workdir"])


def _val_records(trained, count):
  return evaluate.held_out_records([trained["data"], trained["tokens"]], "val", count)


def test_rgb_to_depth_and_segmentation_beat_the_baselines(trained, generator):
  scores = evaluate.rgb_to_maps(generator, [trained["data"], trained["tokens"]], count=32,
                                batch_size=16, train_count=300)
  print(json.dumps(scores, indent=1))
  assert scores["depth_abs_rel"] < 0.8 * scores["depth_abs_rel_mean_baseline"]
  assert scores["semseg_pixel_acc"] > scores["semseg_pixel_acc_majority_baseline"] + 0.1
  # The true patch tokens, decoded, bound every model from above: far better than the
  # baselines, short of perfect (a patch holds one depth and one class).
  assert (scores["depth_abs_rel_tokenizer_ceiling"]
          < 0.5 * scores["depth_abs_rel_mean_map_baseline"])
  assert 0.3 < scores["semseg_object_miou_tokenizer_ceiling"] < 0.9
  assert scores["semseg_pixel_acc"] <= scores["semseg_pixel_acc_tokenizer_ceiling"] < 1.0


def test_image_use_scores_the_right_image_against_another_scenes(trained, generator):
  use = evaluate.image_use(generator, [trained["data"], trained["tokens"]], count=16)
  assert use["num_images"] == 16
  assert use["gain"] == pytest.approx(use["cross_entropy_other_image"] - use["cross_entropy"])
  # Trained: far below a uniform guess over the 7 classes, with either image. (This
  # 150-step model has learnt the layout, not to read its image: its gain is about 0.0004
  # nats; the 800-step run in benchmarks/README.md reaches 0.32.)
  vocabulary = patch_tokens.quantizer_for("tok_semseg").num_codes
  assert use["cross_entropy"] < 0.5 * np.log(vocabulary)
  assert use["cross_entropy_other_image"] < 0.5 * np.log(vocabulary)


def test_rgb_to_caption_scores_the_colors_its_captions_name(trained, generator):
  words = evaluate.rgb_to_caption(generator, [trained["data"], trained["tokens"]], count=4,
                                  batch_size=4, permutations=99)
  assert words["num_images"] == 4 and len(words["examples"]) == 3
  assert all(isinstance(text, str) and text for _, text in words["examples"])
  # The statistic pairs each generated caption with its own scene's caption: scored
  # again from the returned captions, it gives the same rates.
  truth = [named_colors(r["caption"]) for r in _val_records(trained, 4)]
  again = evaluate.color_agreement(truth, [named_colors(text) for text in words["captions"]],
                                    permutations=99)
  assert words["named_color_rate"] == again["named"]
  assert words["unnamed_color_rate"] == again["unnamed"]
  assert words["color_p_value"] == again["p_value"]


def test_caption_to_rgb_reports_colors_beside_the_tokenizers_ceiling(trained, generator):
  from fourm.generation.sampler import Decoding
  chain = [Decoding("tok_rgb", num_steps=2)]
  colors = evaluate.caption_to_rgb(generator, [trained["data"], trained["tokens"]], chain,
                                    count=8, batch_size=8)
  assert colors["num_images"] == 8 and colors["named_color_count"] > 0
  # The real images and their reconstructions through the patch quantizer are scored
  # with the same detector: the quantizer keeps most named colors and adds no others.
  assert colors["real_named_color_rate"] > 0.8 and colors["real_unnamed_color_rate"] < 0.05
  assert colors["tokenizer_named_color_rate"] > colors["tokenizer_unnamed_color_rate"] + 0.3
  captions = [r["caption"] for r in _val_records(trained, 8)]
  assert colors["named_color_count"] == sum(len(named_colors(c)) for c in captions)


def test_tokenizers_come_from_the_token_datasets(generator):
  assert set(generator.tokenizers) == {"tok_rgb", "tok_depth", "tok_semseg"}
  assert generator.sampler.vocab_limits["tok_semseg"] == patch_tokens.quantizer_for(
      "tok_semseg").num_codes


def test_same_seed_same_images(generator):
  from fourm.generation.chain import default_chain
  chain = default_chain(["tok_semseg", "tok_rgb"])
  first = generator.generate({"caption": "a red cube."}, chain, seed=1, num_samples=2)
  again = generator.generate({"caption": "a red cube."}, chain, seed=1, num_samples=2)
  for name in ("tok_semseg", "tok_rgb"):
    np.testing.assert_array_equal(first.tokens(name), again.tokens(name))


def test_fourm_generate_writes_grid_tokens_and_text(trained, tmp_path, capsys):
  from PIL import Image
  from fourm.data import records
  image = tmp_path / "scene.png"
  Image.fromarray(records.RecordSource(trained["data"], "val")[0]["rgb"]).save(image)
  out = tmp_path / "out"
  code = cli.main(["generate", "--checkpoint", trained["workdir"], "--condition",
                   f"rgb={image}", "--targets", "tok_semseg,tok_depth,caption",
                   "--num-steps", "3", "--num-samples", "2", "--out", str(out)])
  assert code == 0
  printed = capsys.readouterr().out
  assert "[3/3] caption: autoregressive" in printed and "caption 1:" in printed
  with Image.open(out / "grid.png") as grid:
    assert grid.size[0] > 300 and grid.size[1] > 200
  tokens = np.load(out / "tokens.npz")
  assert tokens["tok_depth"].shape == (2, 64) and tokens["rgb"].shape == (2, 64, 64, 3)
  text = json.loads((out / "text.json").read_text())
  assert text["generated"] == ["tok_semseg", "tok_depth", "caption"]
  assert len(text["caption"]) == 2 and all(isinstance(c, str) for c in text["caption"])

  schedule = os.path.join(REPO, "configs/generation/caption_to_all.py")
  code = cli.main(["generate", "--checkpoint", trained["workdir"], "--condition",
                   "caption=a red [S_1] left of a blue sphere.", "--schedule", schedule,
                   "--num-samples", "1", "--out", str(out)])
  assert code == 2  # the schedule asks for tok_normal and det, which this model lacks
  assert "cannot generate 'tok_normal'" in capsys.readouterr().err


def test_out_painting_keeps_the_box_and_regenerates_the_rest(trained, generator, tmp_path):
  from PIL import Image
  from fourm.data import records
  rgb = records.RecordSource(trained["data"], "val")[1]["rgb"]
  Image.fromarray(rgb).save(tmp_path / "scene.png")
  code = cli.main(["generate", "--checkpoint", trained["workdir"], "--condition",
                   f"tok_rgb={tmp_path / 'scene.png'}", "--region", "tok_rgb=0.25,0.25,0.75,0.75",
                   "--outpaint", "--targets", "tok_rgb", "--num-steps", "2", "--num-samples",
                   "1", "--out", str(tmp_path / "out")])
  assert code == 0
  made = np.load(tmp_path / "out" / "tokens.npz")["tok_rgb"][0].reshape(8, 8)
  given = generator.encoder.encode("tok_rgb", [rgb])[1]["tokens"][0].reshape(8, 8)
  np.testing.assert_array_equal(made[2:6, 2:6], given[2:6, 2:6])  # the kept box
  outside = np.ones((8, 8), bool)
  outside[2:6, 2:6] = False
  assert (made[outside] != given[outside]).any()


@pytest.mark.parametrize("arguments, message", [
    (["--condition", "clip=x.npy", "--targets", "tok_rgb"], "not trained on 'clip'"),
    (["--condition", "caption=a cube", "--targets", "tok_normal"], "cannot generate"),
    (["--condition", "caption=a cube"], "--targets a,b,... or --schedule"),
    (["--condition", "caption", "--targets", "tok_rgb"], "expected NAME=VALUE"),
    (["--condition", "rgb=/no/such.png", "--targets", "tok_rgb"], "no such file"),
    (["--condition", "caption=a cube", "--targets", "tok_rgb", "--region",
      "tok_rgb=0,0,1"], "four numbers"),
])
def test_generate_errors_are_one_line(trained, tmp_path, capsys, arguments, message):
  code = cli.main(["generate", "--checkpoint", trained["workdir"], "--out",
                   str(tmp_path / "out"), *arguments])
  assert code == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1


def test_the_notebook_runs(trained):
  import nbclient
  import nbformat
  notebook = nbformat.read(os.path.join(REPO, "notebooks/chained_generation.ipynb"),
                           as_version=4)
  variables = dict(FOURM_CHECKPOINT=trained["workdir"], FOURM_DATA=trained["data"],
                   FOURM_NUM_SAMPLES="2", FOURM_STEPS="2")
  os.environ.update(variables)
  try:
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": REPO}}).execute()
  finally:
    for key in variables:
      os.environ.pop(key, None)
  outputs = [o for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 3  # caption -> all, rgb -> all, in-painting

  def printed(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")
  # A fourm-trained workdir: the demo cells run, the converted-checkpoint cell skips.
  assert converted_from(trained["workdir"]) is None
  assert converted_from(trained["data"]) is None  # no checkpoints at all
  demo = [c for c in notebook.cells if c.cell_type == "code" and "DEMO_SKIPPED:" in c.source]
  assert len(demo) == 3 and not any("skipped" in printed(c) for c in demo)
  cell = next(c for c in notebook.cells
              if c.cell_type == "code" and c.source.startswith("if CONVERTED:"))
  assert printed(cell) == (f"skipped: {trained['workdir']} is not a converted checkpoint (set "
                           "FOURM_CHECKPOINT to a `fourm convert --from reference` workdir)\n")
