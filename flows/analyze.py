"""The ``analyze`` flow: model scores beside human memory data.

The outline only: take an :class:`~memscore.tasks.analysis_options.AnalyzeRequest` (the
inputs, ``out`` and the :class:`~memscore.tasks.analyze.AnalysisOptions`), run
:func:`~memscore.tasks.analyze.run_analysis` (read, match, statistics, ``--out`` files; the library is :mod:`memscore.tasks.analyze`, the statistics
:mod:`memscore.tasks.stats`), attach the Markdown summary
(:mod:`memscore.tasks.summary`) as an artifact and print the text summary.
Every option of ``memscore analyze`` is a field of the request, so ``--prefect`` changes
nothing but the orchestration.
"""

from __future__ import annotations

from typing import Any

from memscore.tasks.analysis_options import AnalyzeRequest
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
from memscore.tasks.summary import summary_lines, summary_markdown

try:  # keep the plain functions importable without Prefect
    from prefect import flow

    from memscore.flows.checked_flow import checked_flow
    from prefect.artifacts import create_markdown_artifact
except ImportError:  # pragma: no cover
    flow = None


if flow is not None:

    @checked_flow(name="analyze", log_prints=True, flow_run_name="analyze: {request.scores} vs {request.human}")
    def analyze(request: AnalyzeRequest) -> dict[str, Any]:
        """Model scores vs human memorability: correlations with bootstrap intervals, paired
        model differences, split-half reliability and the noise ceiling; the summary becomes
        a Markdown artifact (key ``memscore-analysis``).

        Args:
            request: the scores, the human data, the output folder and every option of the
                analysis: an AnalyzeRequest whose options are an AnalysisOptions
                (tasks/analysis_options.py). A dict of its fields is accepted too (a
                deployment run's parameters).
        """
        options = request.options.resolved()  # the credentials named by storage_options_secret, in this process
        result = run_analysis(request.scores, request.human, options, request.out)
        create_markdown_artifact(markdown=summary_markdown(result), key="memscore-analysis",
                                 description="memscore: model scores vs human memorability")
        for line in summary_lines(result):
            print(line)
        if request.report:  # the report of the scores folder with this human data, when asked (flows/report.py)
            from memscore.flows.report import report_after_run

            result["report"] = report_after_run(request.scores, request.report, model=options.model,
                                                human=request.human, analysis=options,
                                                storage_options=options.storage_options)
        return result
