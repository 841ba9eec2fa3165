"""memscore report: an offline HTML report of a memscore output folder.

Provenance (models, weights, counts, runs), the score distribution overall and per
top-level folder (or --group-by column), a gallery of the most and least memorable
images and a random sample read from the archive, the errors by reason, and with
--human the model-vs-human statistics of `memscore analyze` (same code, same
numbers) with the split-half ceiling. --maps adds memorability maps of the gallery
images for every model in DEST (Grad-CAM on the layer each model names; occlusion for
models without one, such as ViTMem). Open OUT/index.html in any browser; it needs no network.
"""

from __future__ import annotations

import argparse

from memscore.flows.analyze_cli import _non_negative, _rate_or_none

EPILOG = """output (OUT):
  index.html          the page (inline style and script, no CDN)
  report.json         everything the page shows
  figures/*.png|svg   the figures, for papers
  images/*           thumbnails (at most 240 px), larger views (1024 px) and maps of the gallery images
                      (<key>-map-<model>.jpg drawn over the crop, <key>-heat-<model>.png the values)

examples:
  memscore report ./photos-scores --out ./report
  memscore report ./photos-scores --out ./report --human lamem/splits/test_1.txt --top 20
  memscore report s3://bucket/scores --out ./report --human trials.csv --human-format trials --maps
  memscore report ./scores --out ./report --model resmem --maps --maps-weights memnet-baseline=runs/m/model.pt"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from memscore.tasks.analysis_options import AnalysisOptions
    from memscore.tasks.report_options import ReportOptions

    D = {name: f.default for name, f in ReportOptions.model_fields.items()}  # the defaults, written once there
    A = AnalysisOptions()
    parser.add_argument("dest", metavar="DEST", help="memscore output folder (local or URI: s3://, gs://, ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and its files (local or URI)")
    parser.add_argument("--model", default=None, metavar="NAME", help="the model to report on when DEST holds several")
    parser.add_argument("--top", type=_non_negative, default=D["top"], metavar="N",
                        help=f"gallery: the N most and N least memorable images (default {D['top']})")
    parser.add_argument("--sample", type=_non_negative, default=D["sample"], metavar="N",
                        help=f"gallery: N more images at random (default {D['sample']})")
    parser.add_argument("--group-by", "--group-column", dest="group_column", default=None, metavar="COL",
                        help="group histograms (and the human statistics) by this column instead of the top-level folder")
    parser.add_argument("--bins", type=_positive, default=D["bins"], metavar="N",
                        help=f"histogram bins, at most (default {D['bins']}; fewer, 2 x sqrt(n) but at least 5, for small archives)")
    parser.add_argument("--maps", action="store_true",
                        help="memorability maps of the gallery images for every model in DEST (loads each model; "
                             "on the CPU Grad-CAM takes about a second per image and model, occlusion 10-25 s)")
    parser.add_argument("--maps-method", choices=("auto", "occlusion"), default=D["maps_method"],
                        help="auto: Grad-CAM on the layer each model names, occlusion for models without one "
                             "(ViTMem); occlusion: occlusion for every model")
    parser.add_argument("--maps-models", default=None, metavar="NAME[,NAME]",
                        help="maps for these models only (default: every model with scores in DEST)")
    parser.add_argument("--maps-weights", action="append", default=[], metavar="MODEL=PATH",
                        help="weights file of MODEL for its maps (default: its published weights; needed for "
                             "models you trained); repeat it for several models")
    parser.add_argument("--occlusion-grid", type=_positive, default=D["occlusion_grid"], metavar="N",
                        help=f"occlusion: N x N windows overlapping by half (default {D['occlusion_grid']}: "
                             f"{D['occlusion_grid'] ** 2 + 1} forward passes per image)")
    parser.add_argument("--maps-device", default=D["maps_device"], metavar="DEVICE",
                        help=f"device for --maps (default {D['maps_device']}; cuda is much faster)")
    parser.add_argument("--memory-limit", default=D["memory_limit"], metavar="SIZE",
                        help=f"DuckDB memory limit for the report's queries, spilling to disk beyond it (default "
                             f"{D['memory_limit']}; 'none': DuckDB's default, 80%% of RAM)")
    parser.add_argument("--seed", type=int, default=D["seed"], metavar="N",
                        help=f"seed of the random sample, the bootstrap and the splits (default {D['seed']})")
    human = parser.add_argument_group("human data (as in memscore analyze)")
    human.add_argument("--human", default=None, metavar="PATH", help="human memorability data (file or BIDS folder)")
    human.add_argument("--human-format", default=A.human_format, choices=["auto", "lamem", "table", "counts", "trials", "bids"])
    human.add_argument("--human-measure", default=None, metavar="MEASURE")
    human.add_argument("--human-column", default=None, metavar="COL")
    human.add_argument("--human-id-column", default=None, metavar="COL")
    human.add_argument("--id-column", default=None, metavar="COL")
    human.add_argument("--match", default=A.match, choices=["auto", "path", "name", "stem"])
    human.add_argument("--bootstrap", type=_non_negative, default=A.bootstrap, metavar="N")
    human.add_argument("--splits", type=_non_negative, default=A.splits, metavar="N")
    human.add_argument("--confidence", type=float, default=A.confidence, metavar="P")
    human.add_argument("--max-filler-fa", type=_rate_or_none, default=A.max_filler_fa, metavar="RATE")
    human.add_argument("--max-vigilance-miss", type=_rate_or_none, default=A.max_vigilance_miss, metavar="RATE")
    human.add_argument("--min-observations", type=_non_negative, default=A.min_observations, metavar="N")
    human.add_argument("--empty-response", choices=["missing", "no"], default=A.empty_response)
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options for DEST, the images, --human and --out URIs, as JSON")
    parser.add_argument("--json", action="store_true", help="print the report's data as one JSON object")
    parser.add_argument("--prefect", action="store_true", help="run as the Prefect flow 'report'")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def check_report_packages(maps: bool = False, dest: str | None = None,
                          storage_options: dict | None = None) -> None:
    """Raise UserError (one line, before a run) when a package the report needs is missing (naming the
    extra) or when ``dest``, the folder a run's ``--report`` will read, is a file."""
    from memscore.flows.cli import UserError

    for package, what in (("matplotlib", "figures"), ("jinja2", "the page")) + ((("captum", "--maps"),) if maps else ()):
        try:
            __import__(package)
        except ImportError:
            raise UserError(f"memscore report needs {package} for {what}: pip install 'memscore[report]'") from None
    if dest is not None:
        from memscore.storage.uris import open_location

        location = open_location(dest, storage_options)
        if location.fs.isfile(location.root):
            raise UserError(f"--report: {dest} is a file, not a memscore output folder (the report reads DEST/scores)")


def parse_maps_weights(items: list[str]) -> dict[str, str]:
    """``["resmem=a.pt", ...]`` -> {"resmem": "a.pt"}; UserError for an item without ``=``."""
    from memscore.flows.cli import UserError

    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--maps-weights takes MODEL=PATH, not {item!r}")
        weights[name.strip()] = path.strip()
    return weights


def run(args: argparse.Namespace) -> int:
    import json

    from memscore.flows.analyze import AnalysisOptions
    from memscore.flows.analyze_cli import human_measures
    from memscore.tasks.measure_table import measure_fields
    from memscore.flows.cli import UserError, parse_storage_options
    from memscore.flows.report import ReportOptions, build_report
    from memscore.storage.human import HumanDataError
    from memscore.tasks.report_data import ReportError

    check_report_packages(args.maps)
    storage_options = parse_storage_options(args.storage_options)
    memory_limit = None if args.memory_limit.lower() == "none" else args.memory_limit
    # one measure, names separated by commas, or all (aliases such as crr and hr), as memscore analyze takes them;
    # several: the model x measure table on the page (the first measure fills the main panel)
    measures = human_measures(args.human_measure)
    analysis = AnalysisOptions(
        id_column=args.id_column, human_id_column=args.human_id_column, human_column=args.human_column,
        **measure_fields(measures), human_format=args.human_format, match=args.match,
        bootstrap=args.bootstrap, splits=args.splits, seed=args.seed, confidence=args.confidence,
        max_filler_fa=args.max_filler_fa, max_vigilance_miss=args.max_vigilance_miss,
        min_observations=args.min_observations, empty_response=args.empty_response,
    )
    maps_models = [m.strip() for m in args.maps_models.split(",") if m.strip()] if args.maps_models else None
    options = ReportOptions(model=args.model, human=args.human, analysis=analysis, group_column=args.group_column,
                            top=args.top, sample=args.sample, seed=args.seed, bins=args.bins, maps=args.maps,
                            maps_method=args.maps_method, maps_models=maps_models,
                            maps_weights=parse_maps_weights(args.maps_weights), occlusion_grid=args.occlusion_grid,
                            maps_device=args.maps_device, storage_options=storage_options,
                            memory_limit=memory_limit)
    try:
        if args.prefect:
            from memscore.flows.params import keep_in_process, split_secrets
            from memscore.flows.report import report

            # Credentials stay in this process: flow parameters are stored in Prefect's database.
            public_options, secret_options = split_secrets(storage_options)
            result = report(args.dest, args.out, options.model_copy(update={"storage_options": public_options}),
                            storage_options_secret=keep_in_process(secret_options))
        else:
            result = build_report(args.dest, args.out, options)
    except (ReportError, HumanDataError) as error:
        raise UserError(str(error)) from error
    if args.json:
        print(json.dumps(result, default=str))
    else:
        shown = sum(len(b["rows"]) for b in result["gallery"])
        print(f"report of {result['distribution']['overall']['n']:,} {result['model']} scores, "
              f"{shown} gallery image(s){', human data' if result['human'] else ''}: {result['outputs']['index']}")
        for warning in result["warnings"]:
            print(f"memscore: warning: {warning}")
    return 0
