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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memscore.tasks.analysis_options import AnalyzeRequest

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
    """argparse type: 0 or more (:func:`flows.params.non_negative`)."""
    from memscore.flows.params import non_negative

    return non_negative(text)


def _rate_or_none(text: str) -> float | None:
    if text.lower() in ("none", "off", "no"):
        return None
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1, or 'none'")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``memscore analyze``: defaults, choices and help come from
    :class:`tasks.analysis_options.AnalysisOptions` and :class:`~tasks.analysis_options.AnalyzeRequest`
    (:func:`flows.params.add_field_option`)."""
    from memscore.flows.params import add_field_option as option
    from memscore.flows.params import non_negative
    from memscore.tasks.analysis_options import AnalysisOptions as O
    from memscore.tasks.analysis_options import AnalyzeRequest as R

    option(parser, "--scores", R, "scores", required=True, metavar="PATH")
    option(parser, "--human", R, "human", required=True, metavar="PATH")
    option(parser, "--id-column", O, "id_column", metavar="COL")
    option(parser, "--human-id-column", O, "human_id_column", metavar="COL")
    option(parser, "--score-column", O, "score_column", action="append", metavar="COL",
           help="model score column (default: score, resmem, memorability, ...); repeat the option or separate "
                "names by commas to compare several columns pairwise")
    option(parser, "--human-column", O, "human_column", metavar="COL")
    option(parser, "--human-measure", O, "human_measure", metavar="MEASURE", choices=None,
           help=O.model_fields["human_measure"].description + "; several (a,b,...) or 'all' give a table model x "
                                                              "measure")
    option(parser, "--derived", O, "derived", action="append", metavar="[NAME=]EXPR",
           help="add a predictor computed per image from the models' scores, e.g. 'gap=resmem - falseresmem' "
                "(model names, numbers, + - * / and parentheses; quote names that are not identifiers: "
                "'\"aim-v2\" - resmem'); repeatable")
    option(parser, "--human-format", O, "human_format")
    option(parser, "--match", O, "match")
    option(parser, "--bootstrap", O, "bootstrap", type=non_negative, metavar="N")
    option(parser, "--splits", O, "splits", type=non_negative, metavar="N")
    option(parser, "--seed", O, "seed", type=int, metavar="N")
    option(parser, "--confidence", O, "confidence", type=float, metavar="P")
    option(parser, ["--group-column", "--group-by"], O, "group_column", metavar="COL")
    option(parser, "--model", O, "model", metavar="NAME")
    option(parser, "--max-filler-fa", O, "max_filler_fa", type=_rate_or_none, metavar="RATE")
    option(parser, "--max-vigilance-miss", O, "max_vigilance_miss", type=_rate_or_none, metavar="RATE")
    option(parser, "--min-observations", O, "min_observations", type=non_negative, metavar="N")
    option(parser, "--empty-response", O, "empty_response")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    option(parser, "--out", R, "out", metavar="DIR")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options for --scores, --human and --out URIs (credentials, endpoint), as JSON; "
                             "credentials stay in this process, never in a flow parameter")
    parser.add_argument("--prefect", action="store_true", help="run as the Prefect flow 'analyze' (adds a Markdown artifact)")
    option(parser, "--report", R, "report", metavar="DIR")


def human_measures(text: str | None) -> list[str]:
    """``--human-measure`` as a list of canonical measures: one name (aliases such as crr, hr),
    names separated by commas, or ``all``; an unknown name is a UserError. None: []."""
    from memscore.flows.cli import UserError
    from memscore.tasks.measure_table import parse_measures

    try:
        return parse_measures(text)
    except ValueError as error:
        raise UserError(str(error)) from None


def build_request(args: argparse.Namespace) -> AnalyzeRequest:
    """The :class:`tasks.analysis_options.AnalyzeRequest` of these arguments (a refused value: a
    one-line UserError). Credentials in ``--storage-options`` stay in this process
    (:func:`tasks.params.storage_fields`); the request holds only their reference."""
    from memscore.flows.cli import parse_storage_options
    from memscore.tasks.analysis_options import AnalysisOptions, AnalyzeRequest
    from memscore.tasks.measure_table import measure_fields
    from memscore.tasks.params import storage_fields

    measures = human_measures(args.human_measure)
    # one measure: exactly as before; several: the model x measure table (the first fills the top-level keys)
    options = AnalysisOptions(
        id_column=args.id_column, human_id_column=args.human_id_column, score_column=args.score_column,
        human_column=args.human_column, **measure_fields(measures), derived=args.derived,
        human_format=args.human_format, match=args.match, bootstrap=args.bootstrap, splits=args.splits,
        seed=args.seed, confidence=args.confidence, group_column=args.group_column, model=args.model,
        max_filler_fa=args.max_filler_fa, max_vigilance_miss=args.max_vigilance_miss,
        min_observations=args.min_observations, empty_response=args.empty_response,
        **storage_fields(parse_storage_options(args.storage_options)),
    )
    return AnalyzeRequest(scores=args.scores, human=args.human, out=args.out, options=options, report=args.report)


def run(args: argparse.Namespace) -> int:
    from memscore.flows.cli import UserError
    from memscore.storage.human import HumanDataError
    from memscore.tasks.analyze import run_analysis
    from memscore.tasks.summary import summary_lines

    request = build_request(args)
    if request.report:  # fail before the analysis, not after it
        from memscore.flows.report_cli import check_report_packages

        check_report_packages(dest=request.scores, storage_options=request.options.resolved().storage_options)
    try:
        if args.prefect:
            from memscore.flows.analyze import analyze

            result = analyze(request)  # every option reaches the flow: it is the same object (report too)
        else:
            result = run_analysis(request.scores, request.human, request.options, request.out)
    except HumanDataError as error:
        raise UserError(str(error)) from error
    report_error = None
    if request.report and not args.prefect:  # after the analysis: its failure must not hide the analysis
        from memscore.flows.cli import find_user_error
        from memscore.flows.report import report_after_run

        options = request.options.resolved()
        try:
            result["report"] = report_after_run(request.scores, request.report, model=options.model,
                                                human=request.human, analysis=options,
                                                storage_options=options.storage_options)
        except Exception as error:  # noqa: BLE001 - a user error is shown after the analysis
            user_error = find_user_error(error)
            if user_error is None:
                raise
            report_error = " ".join(str(user_error).split())
    if args.json:
        print(json.dumps(result, default=str))
        for warning in result.get("warnings") or []:
            print(f"memscore: warning: {warning}", file=sys.stderr)
    else:
        print("\n".join(summary_lines(result)))
        if args.out:
            print(f"wrote {', '.join(result['outputs'].values())}")
        if result.get("report"):
            print(f"report: {result['report']}")
    if report_error:
        print(f"memscore: error: report: {report_error}", file=sys.stderr)
        return 1
    return 0
