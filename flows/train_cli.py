"""memscore train: train a memorability model on your own human memorability data.

Reads the human data (any format `memscore analyze` reads: CSV/TSV/Parquet/JSON,
LaMem's splits files, ...), finds the images it names under IMAGES (a folder or
fsspec URI; by relative path, else by unique file name), splits them (your split
files, a `split` column, or a seeded random 80/10/10 split) and trains. Every
epoch logs train loss, validation loss and validation Spearman (Prefect artifacts
and OUT/metrics.parquet) and writes OUT/checkpoints/last.pt; the best weights by
validation Spearman go to OUT/model.pt with OUT/model_card.json. Run the same
command again to resume a killed run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """trainable models: resmem (published weights, ResNet-152 frozen), resmem-retrain
(everything trainable), memnet-baseline (AlexNet-style branch + fc head), m3m and
m3m-deeplabv3 (ResMem + segmentation branch; segmenter and ResNet-152 frozen), resmem-retrain-aim,
aim-resnet18 and its twin resnet18-nomem (AiM memory; docs/aim.md).

examples:
  memscore train --model m3m --human lamem/splits/train_1.txt --images lamem/images \\
      --split-file train=lamem/splits/train_1.txt --split-file val=lamem/splits/val_1.txt \\
      --split-file test=lamem/splits/test_1.txt --out runs/m3m --device cuda
  memscore train --model memnet-baseline --human scores.csv --images s3://lab/photos --out runs/memnet
  memscore score ./photos --out ./scores --model m3m --weights runs/m3m/model.pt"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``memscore train``: defaults, choices and help come from
    :class:`tasks.train_config.TrainConfig` (:func:`flows.params.add_field_option`)."""
    from memscore.flows.params import add_field_option as option
    from memscore.tasks.train_config import TrainConfig as C

    data = parser.add_argument_group("data")
    option(data, "--model", C, "model", required=True, help="model to train (see below)")
    option(data, "--human", C, "human", required=True, metavar="PATH")
    option(data, "--images", C, "images", required=True, metavar="IMAGES")
    option(data, ["--out", "-o"], C, "out", required=True, metavar="OUT")
    option(data, "--format", C, "human_format")
    option(data, "--id-column", C, "id_column")
    option(data, "--score-column", C, "score_column")
    option(data, "--measure", C, "measure")
    option(data, "--duplicates", C, "duplicates")
    data.add_argument("--split-file", action="append", default=[], metavar="SPLIT=PATH",
                      help="image list for a split (train, val, test); first token per line, e.g. LaMem's splits/*_1.txt")
    option(data, "--val-fraction", C, "val_fraction", type=float)
    option(data, "--test-fraction", C, "test_fraction", type=float)
    option(data, "--seed", C, "seed", type=int)
    option(data, "--max-images", C, "max_images", type=int, metavar="N")
    opt = parser.add_argument_group("training")
    option(opt, "--loss", C, "loss")
    option(opt, "--rank-weight", C, "rank_weight", type=float)
    option(opt, "--optimizer", C, "optimizer")
    option(opt, "--lr", C, "lr", type=float)
    option(opt, "--weight-decay", C, "weight_decay", type=float)
    option(opt, "--epochs", C, "epochs", type=int)
    option(opt, "--batch-size", C, "batch_size", type=int)
    option(opt, "--patience", C, "patience", type=int)
    option(opt, "--amp", C, "amp")
    opt.add_argument("--no-augment", action="store_true", help="no random flips and small crops")
    option(opt, "--freeze", C, "freeze", metavar="PART[,PART]",
           help=C.model_fields["freeze"].description.replace("[] trains all", "'none' trains all"))
    option(opt, "--init", C, "init")
    option(opt, "--resmem-weights", C, "resmem_weights", metavar="PATH")
    option(opt, "--segmenter-weights", C, "segmenter_weights", metavar="PATH")
    option(opt, "--device", C, "device")
    option(opt, "--workers", C, "workers", type=int)
    opt.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a checkpoint")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options for all URIs, as JSON (credentials stay in this process, never in a "
                             "flow parameter)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def parse_split_files(values: list[str]) -> dict[str, str] | None:
    from memscore.flows.cli import UserError

    result: dict[str, str] = {}
    for value in values:
        split, sep, path = value.partition("=")
        split = {"validation": "val", "valid": "val"}.get(split.strip().lower(), split.strip().lower())
        if not sep or split not in ("train", "val", "test") or not path:
            raise UserError(f"--split-file wants SPLIT=PATH with SPLIT train, val or test; got {value!r}")
        result[split] = path
    return result or None


def parse_freeze(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> int:
    from memscore.flows.cli import UserError, parse_storage_options
    from memscore.models.registry import get_model_spec, trainable_model
    from memscore.tasks.params import storage_fields
    from memscore.tasks.train import TrainConfig, TrainingError

    storage_options = parse_storage_options(args.storage_options)
    get_model_spec(args.model)  # unknown model: a one-line error
    try:
        trainable_model(args.model)
    except ValueError as error:
        raise UserError(str(error)) from None
    try:  # a refused value (TrainingError, a UserError) is one line
        config = TrainConfig(
            model=get_model_spec(args.model).name, human=args.human, images=args.images, out=args.out,
            human_format=args.human_format, id_column=args.id_column, score_column=args.score_column,
            measure=args.measure, duplicates=args.duplicates, split_files=parse_split_files(args.split_file),
            val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
            max_images=args.max_images, loss=args.loss, rank_weight=args.rank_weight, optimizer=args.optimizer,
            lr=args.lr, weight_decay=args.weight_decay, epochs=args.epochs, batch_size=args.batch_size,
            patience=args.patience, amp=args.amp, augment=not args.no_augment, freeze=parse_freeze(args.freeze),
            init=args.init, resmem_weights=args.resmem_weights, segmenter_weights=args.segmenter_weights,
            device=args.device, workers=args.workers, resume=not args.no_resume,
            **storage_fields(storage_options),  # credentials stay in this process, not in the flow's parameter
        )
        config.check()
    except TrainingError as error:
        raise UserError(str(error)) from None
    from memscore.models.devices import resolve_device

    resolve_device(args.device)
    from memscore.flows.train import train

    try:
        summary = train(config)
    except TrainingError as error:
        raise UserError(str(error)) from error
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        test = summary.get("test") or {}
        ci = test.get("spearman_ci95") or [None, None]
        print(
            f"memscore: trained {summary['model']} for {summary['epochs_run']} epoch(s)"
            f"{' (early stop)' if summary['stopped_early'] else ''}; best epoch {summary['best_epoch']} "
            f"val Spearman {_fmt(summary['best_val_spearman'])}; test Spearman {_fmt(test.get('spearman'))} "
            f"[{_fmt(ci[0])}, {_fmt(ci[1])}] -> {summary['out']}",
            file=sys.stderr,
        )
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
