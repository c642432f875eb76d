"""The `fourm` command: one entry point, one subcommand per job.

Each subcommand imports what it needs when it runs, so `fourm --help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys


def _synth(args: argparse.Namespace) -> None:
  tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
  if args.instructions or tasks:
    return _synth_instructions(args, tasks)
  from fourm.data import world
  info = world.write_world(args.out, args.num, args.resolution, args.seed,
                           val_fraction=args.val_fraction,
                           records_per_shard=args.records_per_shard,
                           feature_dim=args.feature_dim,
                           extras=[m.strip() for m in args.extras.split(",") if m.strip()],
                           workers=args.workers, progress=not args.quiet)
  print(_summary(args.out, info))


def _synth_instructions(args: argparse.Namespace, tasks: list[str]) -> None:
  from fourm.data import instructions, records
  from fourm.errors import UsageError
  if args.extras:
    raise UsageError("--extras are modalities of the world's records; an instruction "
                     "dataset (--tasks, --instructions) holds rgb and its tasks' answers")
  info = instructions.write_instructions(
      args.out, args.num, args.resolution, args.seed, tasks=tasks or instructions.TASKS,
      val_fraction=args.val_fraction, records_per_shard=args.records_per_shard,
      workers=args.workers, progress=not args.quiet)
  print(_summary(args.out, info))
  if "edited" in info.metadata:
    edited = os.path.join(args.out, info.metadata["edited"])
    print(_summary(edited, records.DatasetInfo.load(edited)))


def _ingest(args: argparse.Namespace) -> None:
  from fourm.errors import UsageError
  sources = [flag for flag in ("images", "coco", "ade20k", "tfds") if getattr(args, flag)]
  if len(sources) != 1:
    raise UsageError("give exactly one of --images DIR, --coco ROOT, --ade20k ROOT, "
                     f"--tfds NAME (got {len(sources)})")
  common = dict(records_per_shard=args.records_per_shard, progress=not args.quiet)
  if args.coco:
    from fourm.data.ingest_coco import ingest_coco
    info = ingest_coco(args.coco, args.out, **common)
  elif args.ade20k:
    from fourm.data.ingest_ade20k import ingest_ade20k
    info = ingest_ade20k(args.ade20k, args.out, **common)
  elif args.tfds:
    from fourm.data.ingest_tfds import ingest_tfds
    info = ingest_tfds(args.tfds, args.out, data_dir=args.tfds_data_dir, **common)
  else:
    from fourm.data import ingest
    info = ingest.ingest(args.images, args.out, captions=args.captions,
                         val_fraction=args.val_fraction, skip_bad=args.skip_bad, **common)
  print(_summary(args.out, info))


def _convert_tokenizer(args: argparse.Namespace, resolved) -> None:
  from fourm.errors import UsageError
  from fourm.interop import tokenizer_mlp, tokenizers
  if tokenizer_mlp.is_mlp_config(resolved[1]):
    if args.resolution or args.input_norm:
      raise UsageError(f"{args.source}: an MLP tokenizer reads feature vectors; --resolution "
                       "and --input-norm are for image tokenizers")
    summary = tokenizer_mlp.import_reference_mlp(args.source, args.out,
                                                 modality=args.modality, resolved=resolved)
    config = summary["config"]
    print(f"converted the MLP tokenizer {summary['file']} ({'/'.join(summary['dtypes'])}): "
          f"{summary['parameters']:,} parameters, [{config.in_channels}] vectors -> "
          f"{config.num_codebooks} ids of {config.codebook_size} codes")
    from tokenizers_vq.global_tokens import global_modalities, global_modality_of
    modality = summary["modality"]
    if modality is None:
      use = ("use it as fourm tokenize --tokenizers " + " or ".join(
          f"{name}={args.out}" for name in global_modalities()) + ", the global tokens "
          "it makes")
    else:
      try:
        use = f"use it as fourm tokenize --tokenizers {global_modality_of(modality)}={args.out}"
      except KeyError:  # a vector no global tokens are made from (human poses)
        use = "load it with fourm.interop.tokenizer_mlp.load_mlp_tokenizer"
    print(f"wrote {summary['workdir']} ({use})")
    return
  summary = tokenizers.import_reference_tokenizer(
      args.source, args.out, modality=args.modality, resolution=args.resolution,
      input_norm=args.input_norm, resolved=resolved)
  config = summary["config"]
  decoder = (f"diffusion decoder ({config.diffusion.prediction} prediction)"
             if config.is_diffusion else "ViT decoder")
  print(f"converted the {config.modality} tokenizer {summary['file']} "
        f"({'/'.join(summary['dtypes'])}): {summary['parameters']:,} parameters, "
        f"{config.vocab_size} codes, {config.grid}x{config.grid} tokens at "
        f"{config.resolution} px, {decoder}")
  from tokenizers_vq.modality_io import input_format
  form = input_format(config)
  print(f"it reads {form['raw']} ({form['values']}), normalized {form['normalization']}")
  print(f"wrote {summary['workdir']} ({_how_to_use(config.modality, args.out)})")


def _how_to_use(raw: str, workdir: str) -> str:
  from fourm import modalities
  try:
    return f"use it as fourm tokenize --tokenizers {modalities.grid_modality_of(raw)}={workdir}"
  except KeyError:  # sam_mask: no model modality is a grid of its tokens
    return ("it fills sam_instance records: tokenizers_vq.sam_instance.tokenize_records("
            f"records, {workdir!r})")


def _convert(args: argparse.Namespace) -> None:
  from fourm.errors import UsageError
  from fourm.interop import convert
  if args.from_format:
    resolved = convert.resolve_source(args.source)
    from fourm.interop.tokenizers import is_tokenizer_config
    if is_tokenizer_config(resolved[1]):
      return _convert_tokenizer(args, resolved)
    if args.modality or args.resolution or args.input_norm:
      raise UsageError(f"{args.source}: --modality, --resolution and --input-norm are for "
                       "tokenizers; this is a 4M model")
    summary = convert.import_reference(args.source, args.out)
    print(f"converted {summary['file']} ({'/'.join(summary['dtypes'])}"
          f"{', read as float32' if summary['dtypes'] != ['F32'] else ''}): "
          f"{summary['tensors']} tensors, {summary['stored']} stored as "
          f"{summary['parameters']:,} parameters, {summary['derived']} checked and "
          f"recomputed; {'tied' if summary['tied_heads'] else 'untied'} output heads; "
          f"modalities {', '.join(summary['modalities'])} at {summary['layout']}"
          + (f" (inputs only: {', '.join(summary['input_only'])})"
             if summary["input_only"] else ""))
    print(f"wrote {summary['workdir']} (use it as fourm generate --checkpoint, or fourm "
          "finetune --init)")
  else:
    summary = convert.export_reference(args.source, args.out)
    print(f"wrote {summary['file']} ({summary['bytes'] / 2**20:.1f} MiB, "
          f"{summary['tensors']} tensors, float32, the step-{summary['step']} model) in the "
          "reference's layout: load it with its load_safetensors + FM(config)")


def _show(args: argparse.Namespace) -> None:
  from fourm.data import records, visualize
  from fourm.errors import UsageError
  if args.num < 1:
    raise UsageError(f"--num {args.num}: show at least one sample")
  samples = _samples_to_show(args)
  infos = [records.DatasetInfo.load(d) for d in args.data]
  # Class names live with the segmentation, which may be a side-by-side store.
  class_names = next((i.metadata["classes"] for i in infos if "classes" in i.metadata), None)
  title = (f"{', '.join(args.data)} [{args.split}]"
           f"{' through the training augmentation' if args.augmented else ''}")
  path = visualize.save_grid(samples, args.out, tile=args.tile,
                             class_names=class_names, title=title)
  print(f"wrote {path} ({len(samples)} samples, modalities: "
        f"{', '.join(sorted({k for s in samples for k in s} - {'__name__'}))})")


def _samples_to_show(args: argparse.Namespace) -> list[dict]:
  from fourm import modalities
  from fourm.data import pipeline, records
  if not args.augmented:
    source = records.RecordSource(args.data, args.split)
    count = min(args.num, len(source))
    samples = [source[i] for i in range(count)]
  else:
    config = pipeline.PipelineConfig(
        data=tuple(args.data), split=args.split, batch_size=args.num, resolution=args.resolution,
        seed=args.seed, shuffle=False, num_epochs=1, augment=True, read_threads=2)
    batch = next(pipeline.Pipeline(config).iterator())
    samples = [s for s in pipeline.unbatch(batch) if s["meta"]["valid"]]
  for sample in samples:
    sample["__name__"] = str(sample.pop(modalities.KEY.name, ""))
    sample.pop("meta", None)
  return samples


def _info(args: argparse.Namespace) -> None:
  from fourm.data import records
  info = records.DatasetInfo.load(args.data)
  for split in info.splits:  # the counts printed are those the shards hold
    records.RecordSource(args.data, split, validate=False)
  print(_summary(args.data, info))


def _modalities(args: argparse.Namespace) -> None:
  from fourm import modalities
  layout = modalities.LAYOUTS[args.layout]
  print(f"layout {args.layout}: {layout.resolution} px, {layout.patch_size} px patches, "
        f"{layout.grid}x{layout.grid} grid\n")
  print(modalities.describe(layout))


def _tokenize(args: argparse.Namespace) -> None:
  from fourm import modalities
  from fourm.data import patch_tokens
  from fourm.errors import UsageError
  if args.tokenizers:
    from tokenizers_vq import tokenize
    info = tokenize.tokenize_dataset(args.data, args.out, args.tokenizers,
                                     batch_size=args.batch_size, progress=not args.quiet)
  elif args.method == "patches":
    names = (tuple(args.modalities.split(",")) if args.modalities
             else patch_tokens.quantizable())
    info = patch_tokens.write_patch_tokens(args.data, args.out,
                                           modalities.LAYOUTS[args.layout], names,
                                           progress=not args.quiet)
  else:
    raise UsageError("give --tokenizers WORKDIR... (trained VQ-VAEs) or --method patches")
  print(_summary(args.out, info))


def _pseudolabel(args: argparse.Namespace) -> None:
  from pseudolabel import job, torch_model
  tasks = job.parse_tasks(args.tasks)
  models = {task: torch_model.TINY if args.tiny else getattr(args, f"{task}_model")
            for task in job.DEFAULT_MODELS}
  if args.tiny and any(task not in job.LIBRARY_LABELERS for task in tasks):
    print("--tiny: tiny random-init networks; the labels they make are meaningless")
  fov = args.fov if args.fov is not None else job.camera_fov(args.data)
  labelers = job.build_labelers(tasks, models, device=args.device, fov_deg=fov)
  out = args.out or args.data.rstrip("/") + "_pseudolabels"
  info = job.pseudolabel_dataset(args.data, out, labelers, beside=args.beside,
                                 batch_size=args.batch_size, progress=not args.quiet)
  print(_summary(out, info))
  failed = info.metadata.get("num_failed", 0)
  total = sum(split.num_records for split in info.splits.values())
  print(f"  {failed} of {total} images failed to label"
        f"{' (listed in dataset_info.json)' if failed else ''}")


def _train_tokenizer(args: argparse.Namespace) -> None:
  from fourm import config as config_lib
  from tokenizers_vq import train
  config = config_lib.load_config(args.config, args.overrides)
  train.train(config, args.workdir)


def _train_text(args: argparse.Namespace) -> None:
  from tokenizers_vq import text_train
  text_train.run(args)


def _train(args: argparse.Namespace) -> None:
  from fourm.train import distributed
  distributed.initialize_from_env()
  from fourm import config as config_lib
  from fourm.train import loop
  config = config_lib.load_config(args.config, args.overrides)
  loop.train(config, args.workdir, stop_after=args.stop_after)


def _finetune(args: argparse.Namespace) -> None:
  from fourm.train import distributed
  distributed.initialize_from_env()
  from fourm import config as config_lib
  from fourm.finetune import loop
  overrides = list(args.overrides) + ([f"init={args.init!r}"] if args.init else [])
  config = config_lib.load_config(args.config, overrides)
  if args.mesh:
    from fourm.errors import UsageError
    from fourm.train import mesh as mesh_lib
    if any(o.startswith("mesh.") or o.startswith("mesh=") for o in args.overrides):
      raise UsageError("give the mesh once: --mesh or --config.mesh.*, not both")
    config.mesh = mesh_lib.flag_config(args.mesh)
  loop.finetune(config, args.workdir, stop_after=args.stop_after)


def _evaluate(args: argparse.Namespace) -> None:
  from fourm.finetune import loop
  loop.evaluate_workdir(args.workdir, split=args.split, out=args.out,
                        num_examples=args.num_examples)


def _generate(args: argparse.Namespace) -> None:
  from fourm.generation import cli as generate_cli
  generate_cli.run(args)


def _index_build(args: argparse.Namespace) -> None:
  from fourm.retrieval import cli as retrieval_cli
  retrieval_cli.run_build(args)


def _index_search(args: argparse.Namespace) -> None:
  from fourm.retrieval import cli as retrieval_cli
  retrieval_cli.run_search(args)


def _summary(directory: str, info) -> str:
  lines = [f"dataset {info.name} at {directory}"]
  for split, split_info in info.splits.items():
    lines.append(f"  {split}: {split_info.num_records} records in "
                 f"{len(split_info.shards)} shard(s)")
  for name, entry in info.modalities.items():
    shape = "x".join("?" if d is None else str(d) for d in entry["shape"]) \
        if entry["shape"] is not None else "-"
    lines.append(f"  {name:<10} {entry['dtype']:<8} {shape:<12} in {entry['count']} records")
  skipped = info.metadata.get("num_skipped")
  if skipped:
    lines.append(f"  {skipped} unreadable input(s) skipped, listed in dataset_info.json")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="fourm", description="Any-to-any masked multimodal modeling (4M-style) in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser("synth", help="render the synthetic world (all 4M-7 raw modalities)")
  p.add_argument("--out", required=True, help="output dataset directory")
  p.add_argument("--num", type=int, required=True, help="number of scenes (train + val)")
  p.add_argument("--resolution", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--val-fraction", type=float, default=0.1)
  p.add_argument("--records-per-shard", type=int, default=1000)
  p.add_argument("--feature-dim", type=int, default=64, help="channels of the CLIP-like map")
  p.add_argument("--extras", default="",
                 help="4M-21 modalities to render too, comma-separated: canny_edge (the "
                      "image's exact step edges), color_palette, metadata")
  p.add_argument("--tasks", default="",
                 help="write instruction tasks with exact answers instead (docs/"
                      "instructions.md), comma-separated: edit (edited scenes, in OUT/"
                      "edited), segment, detect, question")
  p.add_argument("--instructions", action="store_true",
                 help="instruction tasks of all four kinds (--tasks edit,segment,detect,"
                      "question)")
  p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=_synth)

  p = sub.add_parser("ingest", help="turn a folder of images, or COCO / ADE20K / a "
                     "tensorflow-datasets builder as you hold it, into a dataset")
  p.add_argument("--images", help="folder of images (searched recursively)")
  p.add_argument("--coco", metavar="ROOT",
                 help="COCO: ROOT/annotations/instances_{train,val}2017.json + images (det)")
  p.add_argument("--ade20k", metavar="ROOT",
                 help="ADE20K: ADEChallengeData2016/ (semseg, 150 classes)")
  p.add_argument("--tfds", metavar="NAME",
                 help="a prepared tfds builder (array_record): coco/2017, scene_parse150, "
                      "nyu_depth_v2, imagenet2012")
  p.add_argument("--tfds-data-dir", default=None, help="default: $TFDS_DATA_DIR")
  p.add_argument("--captions", help="captions: .json object, .jsonl, or path<TAB>caption .tsv")
  p.add_argument("--out", required=True, help="output dataset directory")
  p.add_argument("--val-fraction", type=float, default=0.0)
  p.add_argument("--records-per-shard", type=int, default=1000)
  p.add_argument("--skip-bad", action="store_true",
                 help="skip unreadable images (counted and listed) instead of stopping")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=_ingest)

  p = sub.add_parser("show", help="draw samples of every modality side by side as a PNG")
  p.add_argument("data", nargs="+", help="dataset directories (several: read side by side)")
  p.add_argument("--out", required=True, help="PNG file to write")
  p.add_argument("--split", default="train")
  p.add_argument("--num", type=int, default=4, help="samples (rows)")
  p.add_argument("--tile", type=int, default=160, help="pixels per tile")
  p.add_argument("--augmented", action="store_true",
                 help="show samples as the training pipeline delivers them")
  p.add_argument("--resolution", type=int, default=64, help="pipeline output size")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(run=_show)

  p = sub.add_parser("tokenize", help="write the token records of a dataset, side by side")
  p.add_argument("--data", required=True, help="the dataset directory to tokenize")
  p.add_argument("--out", required=True, help="the token dataset directory (read beside --data)")
  p.add_argument("--tokenizers", nargs="+", default=[], metavar="WORKDIR",
                 help="VQ-VAE workdirs (fourm tokenizer train, or converted with fourm "
                      "convert --from reference: grids, and the MLP tokenizers of global "
                      "tokens), each optionally as tok_<modality>=WORKDIR")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--method", default="",
                 help="'patches': ground-truth patch quantizers of the exact labels (no "
                      "training needed; a stand-in for VQ-VAEs)")
  p.add_argument("--modalities", default="", help="with --method patches: comma-separated")
  p.add_argument("--layout", choices=("small", "reference"), default="small",
                 help="with --method patches: the token grid")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=_tokenize)

  from pseudolabel import DEFAULT_MODELS  # names only: torch loads when a labeler is built
  p = sub.add_parser("pseudolabel", help="add depth, normals, segmentation, boxes, CLIP and "
                     "DINOv2 features, SAM edges and instances, people's keypoints, T5 "
                     "caption embeddings (off-the-shelf networks), canny edges, color "
                     "palettes and metadata to a dataset, side by side",
                     description="Runs pseudo-labelers (torch + transformers: pip install "
                                 "'fourm[pseudolabel]') over the rgb of a dataset and writes "
                                 "the new modalities beside it; resumable.")
  p.add_argument("--data", required=True, help="dataset directory (fourm ingest / fourm synth)")
  p.add_argument("--out", default=None,
                 help="output directory, read beside --data (default: DATA_pseudolabels)")
  p.add_argument("--tasks", default="depth,normals,semseg,det,clip",
                 help="comma-separated: depth,normals,semseg,det,clip (4M-7's networks), "
                      "sam_edge,sam_instance,dinov2,dinov2_global,human_keypoints,t5_caption "
                      "(4M-21's networks; sam_instance writes untokenized sam_instance_masks, "
                      "human_keypoints boxes and COCO keypoints, not human_poses; t5_caption "
                      "embeds the record's caption), canny_edge,color_palette,metadata (no "
                      "network; metadata reads the record's other modalities and those the "
                      "tasks before it make)")
  p.add_argument("--beside", action="append", default=[], metavar="DIR",
                 help="a side-by-side store of --data (e.g. an earlier pseudolabel output) "
                      "whose modalities the tasks that read records (metadata, t5_caption) "
                      "read too; repeatable")
  p.add_argument("--depth-model", default=DEFAULT_MODELS["depth"],
                 help="hub id or local directory of a DPT / Depth Anything checkpoint")
  p.add_argument("--semseg-model", default=DEFAULT_MODELS["semseg"],
                 help="hub id or local directory of a Mask2Former checkpoint")
  p.add_argument("--det-model", default=DEFAULT_MODELS["det"],
                 help="hub id or local directory of a DETR-family checkpoint (it also finds "
                      "the people of human_keypoints)")
  p.add_argument("--clip-model", default=DEFAULT_MODELS["clip"],
                 help="hub id or local directory of a CLIP checkpoint")
  p.add_argument("--sam-model", default=DEFAULT_MODELS["sam"],
                 help="hub id or local directory of a SAM checkpoint (sam_edge and "
                      "sam_instance share one run)")
  p.add_argument("--dinov2-model", default=DEFAULT_MODELS["dinov2"],
                 help="hub id or local directory of a DINOv2 checkpoint (dinov2 and "
                      "dinov2_global share one pass)")
  p.add_argument("--human-keypoints-model", default=DEFAULT_MODELS["human_keypoints"],
                 help="hub id or local directory of a ViTPose checkpoint")
  p.add_argument("--t5-caption-model", default=DEFAULT_MODELS["t5_caption"],
                 help="hub id or local directory of a T5 checkpoint (its encoder)")
  p.add_argument("--tiny", action="store_true",
                 help="tiny random-init networks instead (no download; MEANINGLESS labels, "
                      "for tests and demos); also per network as --NAME-model tiny-random")
  p.add_argument("--fov", type=float, default=None,
                 help="horizontal field of view (degrees) for normals from depth (default: "
                      "the dataset's camera if it records one, else 60)")
  p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(run=_pseudolabel)

  p = sub.add_parser("tokenizer", help="train tokenizers (text WordPiece; VQ-VAEs to come)")
  tokenizer_sub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="WHAT")
  q = tokenizer_sub.add_parser("train", help="train a VQ-VAE tokenizer (resumes from --workdir)",
                               description="Train a VQ-VAE tokenizer. Override config fields "
                                           "with --config.FIELD=VALUE.")
  q.add_argument("--config", required=True,
                 help="FILE[:VARIANT], e.g. configs/tokenizers/vqvae.py:rgb_tiny")
  q.add_argument("--workdir", required=True,
                 help="checkpoints, TensorBoard logs, reconstructions.png")
  q.set_defaults(run=_train_tokenizer, overrides=[])
  q = tokenizer_sub.add_parser("train-text", help="train a WordPiece vocabulary on captions, "
                               "with the reference's special, sentinel and box tokens")
  from tokenizers_vq import text_train
  text_train.add_arguments(q)
  q.set_defaults(run=_train_text)

  p = sub.add_parser("train", help="train a 4M model (resumes from --workdir)",
                     description="Train a 4M model. Override any config field with "
                                 "--config.FIELD=VALUE (e.g. --config.batch_size=64).")
  p.add_argument("--config", required=True, help="config file, optionally FILE:VARIANT")
  p.add_argument("--workdir", required=True, help="checkpoints and TensorBoard logs go here")
  p.add_argument("--stop-after", type=int, default=None,
                 help="end this invocation after N steps with a checkpoint (time-limited jobs)")
  p.set_defaults(run=_train, overrides=[])

  p = sub.add_parser("finetune", help="fine-tune a trained 4M encoder for a task "
                     "(resumes from --workdir)",
                     description="Fine-tune the rgb encoder of a fourm train run for "
                                 "classification, segmentation, depth or detection. Override "
                                 "config fields with --config.FIELD=VALUE.")
  p.add_argument("--config", required=True,
                 help="FILE[:VARIANT], e.g. configs/finetune/segmentation_synthetic.py")
  p.add_argument("--init", default=None,
                 help="the pre-trained model: a fourm train workdir (sets config.init)")
  p.add_argument("--mesh", default="", metavar="data=D,fsdp=F,tensor=T",
                 help="the mesh over every device (sets config.mesh; unnamed axes are 1, "
                      "one may be -1); the --init parameters are read straight into their "
                      "shards on it. Default: the config's (data parallel)")
  p.add_argument("--workdir", required=True, help="checkpoints and TensorBoard logs go here")
  p.add_argument("--stop-after", type=int, default=None,
                 help="end this invocation after N steps with a checkpoint (time-limited jobs)")
  p.set_defaults(run=_finetune, overrides=[])

  p = sub.add_parser("evaluate", help="metrics, predictions and a picture grid of a "
                     "fine-tuned model on a split")
  p.add_argument("--workdir", required=True, help="a fourm finetune workdir")
  p.add_argument("--split", default=None, help="default: the config's eval split")
  p.add_argument("--out", default=None, help="default: WORKDIR/eval_SPLIT")
  p.add_argument("--num-examples", type=int, default=8, help="rows of the picture grid")
  p.set_defaults(run=_evaluate)

  p = sub.add_parser(
      "generate", help="generate modalities from others with a trained model, chained",
      description="Tokenizes the conditions, runs the chain of targets (each generated "
                  "modality conditions the next), decodes everything and writes OUT/grid.png, "
                  "OUT/tokens.npz and OUT/text.json.")
  p.add_argument("--checkpoint", required=True, help="a fourm train workdir")
  p.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE",
                 help="caption=TEXT (sentinels [S_1].. mark gaps to fill), rgb=IMAGE, "
                      "depth|normal|semseg=FILE (.npy/.png), tok_x=FILE.npy, det=BOXES.json; "
                      "repeat for several")
  p.add_argument("--data", nargs="+", default=[], metavar="DIR",
                 help="take conditions from the records of these datasets (read side by side)")
  p.add_argument("--use", default="", help="with --data: the record modalities to condition "
                 "on, comma-separated (e.g. rgb or caption)")
  p.add_argument("--split", default="val", help="with --data")
  p.add_argument("--indices", default="0,1,2,3", help="with --data: records, one sample each")
  p.add_argument("--targets", default="", help="comma-separated targets, generated in order "
                 "with the default settings (MaskGIT 8 steps for grids, left to right for text)")
  p.add_argument("--schedule", default="", help="a chain schedule file (configs/generation/)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--num-samples", type=int, default=4, help="samples per condition (rows)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tokenizers", nargs="+", default=[], metavar="tok_x=WORKDIR",
                 help="VQ-VAE workdirs, overriding those the model's token datasets record")
  p.add_argument("--negative", action="append", default=[], metavar="NAME=VALUE",
                 help="a negative prompt (steps with guidance push away from it)")
  p.add_argument("--region", action="append", default=[], metavar="NAME=X0,Y0,X1,Y1",
                 help="hide this box of a given grid condition, to in-paint it")
  p.add_argument("--outpaint", action="store_true",
                 help="with --region: hide everything but the box instead (out-painting)")
  p.add_argument("--cfg-scale", type=float, default=None,
                 help="with --targets: classifier-free guidance scale for every target")
  p.add_argument("--num-steps", type=int, default=None, help="with --targets: decoding steps")
  p.add_argument("--temperature", type=float, default=None, help="with --targets")
  p.add_argument("--instruction", default=None, metavar="TEXT",
                 help="an instruction for a model tuned on them (docs/instructions.md), "
                      "e.g. 'make the cube blue'; the same as --condition instruction=TEXT")
  p.add_argument("--retrieve", type=int, default=0, metavar="K",
                 help="retrieval-augmented: condition on the K documents an index retrieves "
                      "for each sample's caption / rgb condition (a model trained with "
                      "config.retrieval; docs/retrieval.md)")
  p.add_argument("--index", default="", help="with --retrieve: the index (default: the "
                 "run's config.retrieval.index)")
  p.add_argument("--infill", choices=("span", "cm3"), default=None,
                 help="how a text target given with gaps ([S_1], ...) is filled: span (4M's "
                      "span masking, the default) or cm3 (a model trained with config.cm3)")
  p.add_argument("--mesh", default="", metavar="data=D,fsdp=F,tensor=T",
                 help="shard the model over every device, each reading only its shard of "
                      "the checkpoint (a training config's mesh; unnamed axes are 1, one "
                      "may be -1); default: one device")
  p.set_defaults(run=_generate)

  p = sub.add_parser(
      "convert", help="import a reference (PyTorch) 4M checkpoint as a fourm workdir, or "
      "export a fourm workdir as one",
      description="fourm convert --from reference SOURCE --out WORKDIR: SOURCE is a "
                  ".safetensors file, a folder with config.json + model.safetensors, or a "
                  "Hugging Face hub id (e.g. EPFL-VILAB/4M-7_B_CC12M), of a 4M model or of a "
                  "tokenizer (e.g. EPFL-VILAB/4M_tokenizers_semseg_4k_224-448: the WORKDIR "
                  "is then a tokenizer for fourm tokenize --tokenizers). fourm convert --to "
                  "reference WORKDIR --out FILE.safetensors writes the reference's layout.")
  direction = p.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from", dest="from_format", choices=("reference",),
                         help="import: SOURCE is a reference checkpoint")
  direction.add_argument("--to", dest="to_format", choices=("reference",),
                         help="export: SOURCE is a fourm workdir")
  p.add_argument("source", metavar="SOURCE")
  p.add_argument("--out", required=True, help="the new workdir (import) or .safetensors "
                 "file (export)")
  p.add_argument("--modality", help="tokenizers: the raw modality it tokenizes (rgb, depth, "
                 "semseg, clip, ..., dinov2_global for an MLP tokenizer); known for the "
                 "published hub ids")
  p.add_argument("--input-norm", help="tokenizers: how raw values become its input, if not "
                 "the reference's for the modality (see docs/tokenizers.md)")
  p.add_argument("--resolution", type=int, help="tokenizers: the image size to tokenize at "
                 "(default: the size it was built for; positions are resized as the "
                 "reference resizes them)")
  p.set_defaults(run=_convert)

  from fourm.retrieval.encoders import DEFAULT_ENCODER  # a name: torch loads with the encoder
  p = sub.add_parser("index", help="retrieval: build a memory bank (CLIP vectors in a faiss "
                     "index) over a dataset, search it")
  index_sub = p.add_subparsers(dest="index_command", required=True, metavar="WHAT")
  q = index_sub.add_parser(
      "build", help="encode a dataset split into a memory-bank index (resumable)",
      description="Encodes every record's image and caption with CLIP (a document's vector "
                  "is the mean of its parts'), stores them in a faiss inner-product index "
                  "with each record's precomputed neighbours, and prints recall@k. A killed "
                  "build resumes where it stopped; a finished one is not rebuilt.")
  q.add_argument("--data", required=True, nargs="+", metavar="DIR",
                 help="dataset directory (several: read side by side)")
  q.add_argument("--out", required=True, metavar="INDEX", help="the index directory")
  q.add_argument("--split", default="train", help="the split to index (e.g. train, "
                 "train[:1000])")
  q.add_argument("--encoder", default=DEFAULT_ENCODER,
                 help="hub id or local directory of a CLIP checkpoint")
  q.add_argument("--tiny", action="store_true",
                 help="a tiny random-init CLIP instead (no download; MEANINGLESS vectors, "
                      "for tests and demos)")
  q.add_argument("--parts", default="rgb,caption",
                 help="the record modalities a document is made of (comma-separated)")
  q.add_argument("--neighbours", type=int, default=32,
                 help="neighbours precomputed per record for training (0: none)")
  q.add_argument("--dropout-variants", type=int, default=2,
                 help="query-dropout draws per record in the neighbour table")
  q.add_argument("--dropout-rate", type=float, default=0.2,
                 help="fraction of a training query's words / patches dropped (CM3leon: 0.2)")
  q.add_argument("--seed", type=int, default=0, help="seed of the query-dropout draws")
  q.add_argument("--faiss", choices=("flat", "hnsw"), default="",
                 help="index kind (default: exact flat up to 1M documents, HNSW above)")
  q.add_argument("--recall", type=int, default=256, metavar="N",
                 help="print recall@1/5/10 of N records' captions finding their own "
                      "document (0: skip)")
  q.add_argument("--batch-size", type=int, default=32)
  q.add_argument("--chunk-size", type=int, default=512,
                 help="records per resumable chunk")
  q.add_argument("--device", default="cpu", help="torch device: cpu, cuda, mps")
  q.add_argument("--quiet", action="store_true", help="no progress bar")
  q.set_defaults(run=_index_build)
  q = index_sub.add_parser("search", help="the nearest documents of a caption or image")
  q.add_argument("--index", required=True, help="an index directory (fourm index build)")
  q.add_argument("--text", default="", help="a caption to search with")
  q.add_argument("--image", default="", help="an image file to search with (with --text: "
                 "both, as one document)")
  q.add_argument("-k", type=int, default=4, help="documents to print")
  q.add_argument("--encoder", default="", help="default: the one the index was built with")
  q.add_argument("--captions", action="store_true",
                 help="print each document's caption too (reads the indexed dataset)")
  q.add_argument("--device", default="cpu", help="torch device")
  q.set_defaults(run=_index_search)

  p = sub.add_parser("info", help="summarize a dataset directory")
  p.add_argument("data")
  p.set_defaults(run=_info)

  p = sub.add_parser("modalities", help="print the modality registry at a layout")
  p.add_argument("--layout", choices=("small", "reference"), default="reference")
  p.set_defaults(run=_modalities)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  # Config overrides (--config.a.b=value) are free-form: take them out before argparse.
  overrides = [a.removeprefix("--config.") for a in argv if a.startswith("--config.")]
  args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
  if overrides:
    if not hasattr(args, "overrides"):
      print(f"fourm {args.command}: error: --config.* overrides are for fourm train, "
            "fourm finetune and fourm tokenizer train", file=sys.stderr)
      return 2
    args.overrides = overrides
  from fourm import compilation_cache
  from fourm.errors import FourmError, write_refusal
  compilation_cache.enable()  # a second run reads what the first compiled
  try:
    args.run(args)
  except FourmError as error:
    print(f"fourm {args.command}: error: {error}", file=sys.stderr)
    return 2
  except Exception as error:
    # A full, read-only or forbidden file system, wherever it refuses a write that the
    # command does not report in its own words (those raise WriteError above).
    refusal = write_refusal(error)
    if refusal is None:
      raise
    reason, path = refusal
    print(f"fourm {args.command}: error: cannot write {path or 'its output'}: {reason}",
          file=sys.stderr)
    return 2
  except BrokenPipeError:
    # The reader went away (`fourm info ... | head`): not an error of ours, nothing to say.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
