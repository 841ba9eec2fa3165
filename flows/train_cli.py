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
    data = parser.add_argument_group("data")
    data.add_argument("--model", required=True, help="model to train (see below)")
    data.add_argument("--human", required=True, metavar="PATH", help="human memorability data (path or URI)")
    data.add_argument("--images", required=True, metavar="IMAGES", help="folder or fsspec URI with the images")
    data.add_argument("--out", "-o", required=True, metavar="OUT", help="folder or fsspec URI for checkpoints, metrics and the model")
    data.add_argument("--format", dest="human_format", default="auto", help="human data format (default: auto)")
    data.add_argument("--id-column", default=None, help="column naming the image (default: detected)")
    data.add_argument("--score-column", default=None, help="column with the memorability score (default: detected)")
    data.add_argument("--measure", default=None, help="which measure to use when the data has several")
    data.add_argument("--duplicates", choices=("error", "mean"), default="error",
                      help="several rows for one image: error (default) or average them")
    data.add_argument("--split-file", action="append", default=[], metavar="SPLIT=PATH",
                      help="image list for a split (train, val, test); first token per line, e.g. LaMem's splits/*_1.txt")
    data.add_argument("--val-fraction", type=float, default=0.1, help="random split: validation share (default 0.1)")
    data.add_argument("--test-fraction", type=float, default=0.1, help="random split: test share (default 0.1)")
    data.add_argument("--seed", type=int, default=0, help="seed of the random split, shuffling and augmentation (default 0)")
    data.add_argument("--max-images", type=int, default=None, metavar="N", help="use at most N images (seeded sample)")
    opt = parser.add_argument_group("training")
    opt.add_argument("--loss", choices=("mse", "rank"), default="mse",
                     help="mse (default, as the seeds) or rank: MSE + pairwise logistic rank loss")
    opt.add_argument("--rank-weight", type=float, default=1.0, help="weight of the rank term (default 1.0)")
    opt.add_argument("--optimizer", choices=("adamw", "adam", "sgd"), default="adamw", help="default adamw (sgd: momentum 0.9)")
    opt.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    opt.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    opt.add_argument("--epochs", type=int, default=20, help="most epochs (default 20)")
    opt.add_argument("--batch-size", type=int, default=32, help="default 32")
    opt.add_argument("--patience", type=int, default=5, help="stop after this many epochs without a better validation Spearman (default 5)")
    opt.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bfloat16 mixed precision; auto: on CUDA only")
    opt.add_argument("--no-augment", action="store_true", help="no random flips and small crops")
    opt.add_argument("--freeze", default=None, metavar="PART[,PART]",
                     help="parts not to train: alexnet, resnet, segmenter or module names; 'none' trains all (default: per model)")
    opt.add_argument("--init", choices=("published", "random"), default="published",
                     help="start from ResMem's published weights and the pretrained segmenter (default) or at random")
    opt.add_argument("--resmem-weights", default=None, metavar="PATH", help="ResMem weights to start from (default: the resmem package's)")
    opt.add_argument("--segmenter-weights", default=None, metavar="PATH",
                     help="segmenter state dict (default: torchvision's pretrained weights via the torch hub cache)")
    opt.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    opt.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (spawned; default 0)")
    opt.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a checkpoint")
    parser.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec options for all URIs, as JSON")
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
    from memscore.flows.cli import UserError
    from memscore.models.registry import get_model_spec
    from memscore.models.registry import trainable_model
    from memscore.tasks.train import TrainConfig, TrainingError

    try:
        storage_options = json.loads(args.storage_options) if args.storage_options else None
    except ValueError as error:
        raise UserError(f"--storage-options is not valid JSON: {error}") from None
    get_model_spec(args.model)  # unknown model: a one-line error
    try:
        trainable_model(args.model)
    except ValueError as error:
        raise UserError(str(error)) from None
    config = TrainConfig(
        model=get_model_spec(args.model).name, human=args.human, images=args.images, out=args.out,
        human_format=args.human_format, id_column=args.id_column, score_column=args.score_column,
        measure=args.measure, duplicates=args.duplicates, split_files=parse_split_files(args.split_file), val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, seed=args.seed, max_images=args.max_images, loss=args.loss,
        rank_weight=args.rank_weight, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        epochs=args.epochs, batch_size=args.batch_size, patience=args.patience, amp=args.amp,
        augment=not args.no_augment, freeze=parse_freeze(args.freeze), init=args.init,
        resmem_weights=args.resmem_weights, segmenter_weights=args.segmenter_weights, device=args.device,
        workers=args.workers, resume=not args.no_resume, storage_options=storage_options,
    )
    try:
        config.check()
    except TrainingError as error:
        raise UserError(str(error)) from None
    from memscore.models.devices import resolve_device

    resolve_device(args.device)
    from memscore.flows.train import train

    try:
        summary = train(**{name: getattr(config, name) for name in config.__dataclass_fields__})
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
