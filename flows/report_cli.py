"""memscore report: an offline HTML report of a memscore output folder.

Provenance (models, weights, counts, runs), the score distribution overall and per
top-level folder (or --group-by column), a gallery of the most and least memorable
images and a random sample read from the archive, the errors by reason, and with
--human the model-vs-human statistics of `memscore analyze` (same code, same
numbers) with the split-half ceiling. --maps adds Grad-CAM memorability maps.
Open OUT/index.html in any browser; it needs no network.
"""

from __future__ import annotations

import argparse

from memscore.flows.analyze_cli import _non_negative, _rate_or_none

EPILOG = """output (OUT):
  index.html          the page (inline style and script, no CDN)
  report.json         everything the page shows
  figures/*.png|svg   the figures, for papers
  images/*.jpg        thumbnails (at most 240 px), larger views (1024 px) and maps of the gallery images

examples:
  memscore report ./photos-scores --out ./report
  memscore report ./photos-scores --out ./report --human lamem/splits/test_1.txt --top 20
  memscore report s3://bucket/scores --out ./report --human trials.csv --human-format trials --maps"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", metavar="DEST", help="memscore output folder (local or URI: s3://, gs://, ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and its files (local or URI)")
    parser.add_argument("--model", default=None, metavar="NAME", help="the model to report on when DEST holds several")
    parser.add_argument("--top", type=_non_negative, default=12, metavar="N",
                        help="gallery: the N most and N least memorable images (default 12)")
    parser.add_argument("--sample", type=_non_negative, default=12, metavar="N",
                        help="gallery: N more images at random (default 12)")
    parser.add_argument("--group-by", "--group-column", dest="group_column", default=None, metavar="COL",
                        help="group histograms (and the human statistics) by this column instead of the top-level folder")
    parser.add_argument("--bins", type=int, default=40, metavar="N", help="histogram bins, at most (default 40; fewer, 2 x sqrt(n) but at least 5, for small archives)")
    parser.add_argument("--maps", action="store_true",
                        help="Grad-CAM memorability maps of the gallery images (loads the model; slow on the CPU)")
    parser.add_argument("--maps-device", default="cpu", metavar="DEVICE", help="device for --maps (default cpu)")
    parser.add_argument("--memory-limit", default="512MB", metavar="SIZE",
                        help="DuckDB memory limit for the report's queries, spilling to disk beyond it (default 512MB; "
                             "'none': DuckDB's default, 80%% of RAM)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the random sample and the bootstrap (default 0)")
    human = parser.add_argument_group("human data (as in memscore analyze)")
    human.add_argument("--human", default=None, metavar="PATH", help="human memorability data (file or BIDS folder)")
    human.add_argument("--human-format", default="auto", choices=["auto", "lamem", "table", "counts", "trials", "bids"])
    human.add_argument("--human-measure", default=None, metavar="MEASURE")
    human.add_argument("--human-column", default=None, metavar="COL")
    human.add_argument("--human-id-column", default=None, metavar="COL")
    human.add_argument("--id-column", default=None, metavar="COL")
    human.add_argument("--match", default="auto", choices=["auto", "path", "name", "stem"])
    human.add_argument("--bootstrap", type=_non_negative, default=1000, metavar="N")
    human.add_argument("--splits", type=_non_negative, default=25, metavar="N")
    human.add_argument("--confidence", type=float, default=0.95, metavar="P")
    human.add_argument("--max-filler-fa", type=_rate_or_none, default=0.5, metavar="RATE")
    human.add_argument("--max-vigilance-miss", type=_rate_or_none, default=0.5, metavar="RATE")
    human.add_argument("--min-observations", type=_non_negative, default=0, metavar="N")
    human.add_argument("--empty-response", choices=["missing", "no"], default="missing")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options for DEST, the images, --human and --out URIs, as JSON")
    parser.add_argument("--json", action="store_true", help="print the report's data as one JSON object")
    parser.add_argument("--prefect", action="store_true", help="run as the Prefect flow 'report'")


def run(args: argparse.Namespace) -> int:
    import json

    from memscore.flows.analyze import AnalysisOptions
    from memscore.flows.analyze_cli import human_measure
    from memscore.flows.cli import UserError, parse_storage_options
    from memscore.flows.report import ReportOptions, build_report
    from memscore.storage.human import HumanDataError
    from memscore.tasks.report_data import ReportError

    for package, what in (("matplotlib", "figures"), ("jinja2", "the page")) + ((("captum", "--maps"),) if args.maps else ()):
        try:
            __import__(package)
        except ImportError:
            raise UserError(f"memscore report needs {package} for {what}: pip install 'memscore[report]'") from None
    storage_options = parse_storage_options(args.storage_options)
    memory_limit = None if args.memory_limit.lower() == "none" else args.memory_limit
    measure = human_measure(args.human_measure)  # aliases (crr, hr, ...) as memscore analyze takes them
    analysis = AnalysisOptions(
        id_column=args.id_column, human_id_column=args.human_id_column, human_column=args.human_column,
        human_measure=measure, human_format=args.human_format, match=args.match,
        bootstrap=args.bootstrap, splits=args.splits, seed=args.seed, confidence=args.confidence,
        max_filler_fa=args.max_filler_fa, max_vigilance_miss=args.max_vigilance_miss,
        min_observations=args.min_observations, empty_response=args.empty_response,
    )
    options = ReportOptions(model=args.model, human=args.human, analysis=analysis, group_column=args.group_column,
                            top=args.top, sample=args.sample, seed=args.seed, bins=args.bins, maps=args.maps,
                            maps_device=args.maps_device, storage_options=storage_options,
                            memory_limit=memory_limit)
    try:
        if args.prefect:
            from memscore.flows.report import report

            fields = {k: v for k, v in analysis.model_dump().items()
                      if k not in ("storage_options", "storage_options_secret", "seed", "kendall_max_n", "min_group_size")}
            result = report(args.dest, args.out, human=args.human, model=args.model, group_column=args.group_column,
                            top=args.top, sample=args.sample, seed=args.seed, bins=args.bins, maps=args.maps,
                            maps_device=args.maps_device, memory_limit=memory_limit, analysis=fields, storage_options=storage_options)
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
