"""memscore analyze: compare model scores with human memorability data.

Spearman (average ranks for ties) and Pearson correlations with percentile
bootstrap intervals over images and p-values (exact at small n), Kendall's tau-b
up to 10,000 images, paired differences between models (several models in a
folder or several score columns), and with trial-level human data the split-half
reliability (Spearman-Brown) and the noise ceiling (its square root) with each
model's fraction of it. DuckDB reads and aggregates; the statistics are
memscore.tasks.stats. docs/analysis.md says what each number is.
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """human data formats (--human-format; auto picks one from the file):
  lamem   'image_name score' per line (LaMem splits)
  table   CSV/TSV/Parquet with an image column and a score column (MemCat, ResMem CSV)
  counts  per-image hit/miss/fa/cr counts (e.g. target_hit, target_miss, target_fa, target_cr)
  trials  one row per presentation: participant_id, image_id, trial_type, [presentation], response
  bids    folder with participants.tsv and sub-*/beh/*_beh.tsv (stim_file, trial_type, response)

measures from counts or trials (--human-measure): hit_rate (default), false_alarm_rate,
corrected_recognition (hit rate - false-alarm rate), miss_rate, dprime (d' = z(H) - z(F) with the
log-linear correction of Hautus 1995: H = (hits + 0.5)/(hits + misses + 1), F likewise).
Several measures (a,b,... or all = hit_rate, false_alarm_rate, corrected_recognition, dprime)
give a table model x measure with Spearman, Pearson, intervals and, with trial data, the
split-half reliability and noise ceiling of each measure.

participants of trial data are excluded when their false-alarm rate on first showings
of fillers/vigilance images exceeds --max-filler-fa (default 0.5) or their miss rate on
vigilance repeats exceeds --max-vigilance-miss (default 0.5); they are listed in the output.

examples:
  memscore analyze --scores ./photos-scores --human lamem/splits/test_1.txt
  memscore analyze --scores resmem.csv --human set1_memorability.csv --human-measure corrected_recognition --json
  memscore analyze --scores ./out --human trials.csv --human-format trials --splits 50 --out ./report
  memscore analyze --scores both.csv --human mem.csv --score-column resmem,memnet   # paired comparison
  memscore analyze --scores ./out --human counts.csv --human-measure all --derived "gap=resmem - falseresmem"

what each number is: docs/analysis.md"""


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _rate_or_none(text: str) -> float | None:
    if text.lower() in ("none", "off", "no"):
        return None
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1, or 'none'")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, metavar="PATH",
                        help="memscore output folder, or a Parquet/CSV file with an id and a score column "
                             "(a local path or a URI: s3://, gs://, az://, ...)")
    parser.add_argument("--human", required=True, metavar="PATH",
                        help="human memorability data (file or BIDS folder; a local path or a URI)")
    parser.add_argument("--id-column", default=None, metavar="COL",
                        help="image id column, both sides unless --human-id-column (default: first of path, "
                             "image_id, image_name, image, filename)")
    parser.add_argument("--human-id-column", default=None, metavar="COL", help="image id column of the human data")
    parser.add_argument("--score-column", action="append", default=None, metavar="COL",
                        help="model score column (default: score, resmem, ...); repeat it or separate names by "
                             "commas to compare several columns pairwise")
    parser.add_argument("--human-column", default=None, metavar="COL", help="a ready human score column")
    parser.add_argument("--human-measure", default=None, metavar="MEASURE",
                        help="measure derived from counts or trials: hit_rate (default), false_alarm_rate, "
                             "corrected_recognition, miss_rate, dprime; several (a,b,...) or 'all' give a table "
                             "model x measure")
    parser.add_argument("--derived", action="append", default=None, metavar="[NAME=]EXPR",
                        help="add a predictor computed per image from the models' scores, e.g. "
                             "'gap=resmem - falseresmem' (model names, numbers, + - * / and parentheses; "
                             "quote names that are not identifiers: '\"aim-v2\" - resmem'); repeatable")
    parser.add_argument("--human-format", default="auto", choices=["auto", "lamem", "table", "counts", "trials", "bids"])
    parser.add_argument("--match", default="auto", choices=["auto", "path", "name", "stem"],
                        help="match images by relative path, file name or file name without extension "
                             "(default auto: the most specific that matches the most images)")
    parser.add_argument("--bootstrap", type=_non_negative, default=1000, metavar="N",
                        help="bootstrap resamples over images for the intervals (default 1000; 0: none)")
    parser.add_argument("--splits", type=_non_negative, default=25, metavar="N",
                        help="random split halves of participants for split-half consistency (default 25)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of resamples and splits (default 0)")
    parser.add_argument("--confidence", type=float, default=0.95, metavar="P", help="interval coverage (default 0.95)")
    parser.add_argument("--group-column", "--group-by", dest="group_column", default=None, metavar="COL",
                        help="also report the statistics per value of this column (human data or scores), "
                             "e.g. MemCat's category")
    parser.add_argument("--model", default=None, metavar="NAME", help="use only this model's scores of a memscore folder")
    parser.add_argument("--max-filler-fa", type=_rate_or_none, default=0.5, metavar="RATE",
                        help="exclude participants whose filler false-alarm rate is above RATE (default 0.5; none: off)")
    parser.add_argument("--max-vigilance-miss", type=_rate_or_none, default=0.5, metavar="RATE",
                        help="exclude participants whose vigilance miss rate is above RATE (default 0.5; none: off)")
    parser.add_argument("--min-observations", type=_non_negative, default=0, metavar="N",
                        help="drop images whose measure rests on fewer than N trials (counts or trial data), from "
                             "the model correlations and the split-half alike (default 0: keep all; images under "
                             "5 are counted in a warning)")
    parser.add_argument("--empty-response", choices=["missing", "no"], default="missing",
                        help="trial data: an empty response is missing (ignored; default) or 'no' (no key press)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write joined.parquet (per image), stats.json and report.md to DIR "
                             "(a local folder or a URI: s3://, gs://, az://, ...)")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options for --scores, --human and --out URIs (credentials, endpoint), as JSON")
    parser.add_argument("--prefect", action="store_true", help="run as the Prefect flow 'analyze' (adds a Markdown artifact)")


def human_measure(text: str | None) -> str | None:
    """``--human-measure`` as the flows' choice: aliases (crr, hr, ...) become canonical names
    (corrected_recognition, hit_rate, ...); an unknown name is a UserError. None stays None."""
    from memscore.flows.cli import UserError
    from memscore.storage.stats import canonical_measure

    if text is None:
        return None
    try:
        return canonical_measure(text)
    except ValueError as error:
        raise UserError(str(error)) from None


def human_measures(text: str | None) -> list[str]:
    """``--human-measure`` as a list of canonical measures: one name (as :func:`human_measure`),
    names separated by commas, or ``all``; an unknown name is a UserError. None: []."""
    from memscore.flows.cli import UserError
    from memscore.tasks.measure_table import parse_measures

    try:
        return parse_measures(text)
    except ValueError as error:
        raise UserError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from memscore.flows.cli import UserError, parse_storage_options
    from memscore.storage.human import HumanDataError
    from memscore.tasks.analyze import AnalysisOptions, run_analysis
    from memscore.tasks.summary import summary_lines

    measures = human_measures(args.human_measure)
    # one measure: exactly as before; several: the model x measure table (the first fills the top-level keys)
    measure = measures[0] if len(measures) == 1 else None
    options = AnalysisOptions(
        id_column=args.id_column, human_id_column=args.human_id_column, score_column=args.score_column,
        human_column=args.human_column, human_measure=measure, human_format=args.human_format,
        match=args.match, bootstrap=args.bootstrap, splits=args.splits, seed=args.seed, confidence=args.confidence,
        group_column=args.group_column, model=args.model, max_filler_fa=args.max_filler_fa,
        max_vigilance_miss=args.max_vigilance_miss, min_observations=args.min_observations,
        empty_response=args.empty_response, storage_options=parse_storage_options(args.storage_options),
        human_measures=measures if len(measures) > 1 else None, derived=args.derived,
    )
    try:
        if args.prefect:
            from memscore.flows.analyze import analyze

            # every option reaches the flow: the same fields as AnalysisOptions, by name
            from memscore.flows.params import keep_in_process, split_secrets

            params = {f.name: getattr(options, f.name) for f in dataclasses.fields(AnalysisOptions)
                      if f.name not in ("kendall_max_n", "min_group_size")}
            # Credentials stay in this process: flow parameters are stored in Prefect's database.
            public_options, secret_options = split_secrets(params.pop("storage_options"))
            result = analyze(args.scores, args.human, out=args.out, storage_options=public_options,
                             storage_options_secret=keep_in_process(secret_options), **params)
        else:
            result = run_analysis(args.scores, args.human, options, args.out)
    except HumanDataError as error:
        raise UserError(str(error)) from error
    if args.json:
        print(json.dumps(result, default=str))
        for warning in result.get("warnings") or []:
            print(f"memscore: warning: {warning}", file=sys.stderr)
    else:
        print("\n".join(summary_lines(result)))
        if args.out:
            print(f"wrote {', '.join(result['outputs'].values())}")
    return 0
