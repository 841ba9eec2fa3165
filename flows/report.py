"""The ``report`` flow: DEST (and optional human data) in, an offline HTML report out.

The outline only. The pipeline is :func:`memscore.tasks.report_build.build_report`
(plain, no Prefect) with its options in one
:class:`~memscore.tasks.report_options.ReportOptions`; the steps live in
``tasks/report_*.py`` (DuckDB queries, figures, the model-vs-human section, the
gallery, the memorability maps, the page). :func:`report` is the Prefect flow around
it; :func:`report_after_run` is the one hook that ends a ``score-archive`` or
``analyze`` run with the report when asked (their ``report`` parameter, ``--report``).

Output folder: ``index.html``, ``report.json`` (everything the page shows),
``figures/*.png|svg`` and ``images/*`` (thumbnails, larger views, maps).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from memscore.tasks.report_build import build_report  # noqa: F401 - the plain pipeline, importable here too
from memscore.tasks.report_data import ReportError  # noqa: F401
from memscore.tasks.report_options import ReportOptions

ARTIFACT_KEY = "memscore-report"


def _link_artifact(index: str, dest: str) -> None:
    """Link the report's page from the current flow run (nothing outside a flow run; never fails)."""
    try:
        from prefect.artifacts import create_link_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return
        link = index if "://" in index else Path(index).resolve().as_uri()
        create_link_artifact(link=link, link_text="memscore report (index.html)", key=ARTIFACT_KEY,
                             description=f"memscore report of {dest}")
    except Exception as error:  # noqa: BLE001 - an artifact never fails a finished report
        print(f"could not create the report artifact: {error}")


def report_after_run(dest: str, out: str | None, *, model: str | None = None, human: str | None = None,
                     analysis: Any = None, storage_options: dict[str, Any] | None = None) -> str | None:
    """The report of ``dest`` written to ``out`` at the end of a run; the page's path (None when ``out`` is None).

    ``analysis``: the run's :class:`~memscore.tasks.analysis_options.AnalysisOptions` (an
    ``analyze`` run: its human data, seed and group column are the report's too). ``model``: the
    run's model, or its models separated by commas (a multi-model run): the report shows the first
    and says so; with ``model`` None and several models in DEST, the first by name, said likewise.
    The maps (when asked) cover every model in DEST either way.
    In a flow run the page becomes a link artifact (key ``memscore-report``). Raises what
    :func:`build_report` raises (:class:`ReportError` and the human data's errors)."""
    if not out:
        return None
    fields: dict[str, Any] = {"model": model, "human": human, "storage_options": storage_options}
    if analysis is not None:
        fields.update(analysis=analysis, seed=analysis.seed, group_column=analysis.group_column)
    if model and "," in model:
        models = [m.strip() for m in model.split(",") if m.strip()]
        fields["model"] = models[0]
        fields["notes"] = [f"this run scored several models ({', '.join(models)}); this report shows {models[0]} "
                           f"(memscore report DEST --model NAME for another)"]
    elif model is None:
        from memscore.tasks.report_data import connect, models_in, open_dest

        con = connect()
        try:
            models = models_in(con, open_dest(con, dest, storage_options))
        finally:
            con.close()
        if len(models) > 1:
            fields["model"] = models[0]
            fields["notes"] = [f"DEST holds several models ({', '.join(models)}); this report shows {models[0]} "
                               f"(memscore report DEST --model NAME for another)"]
    for note in fields.get("notes", []):  # stderr: stdout may be the run's --json
        print(f"memscore: warning: {note}", file=sys.stderr)
    result = build_report(dest, out, ReportOptions(**fields))
    index = result["outputs"]["index"]
    _link_artifact(index, dest)
    return index


try:  # keep the plain function importable without Prefect
    from prefect import flow

    from memscore.flows.checked_flow import checked_flow
except ImportError:  # pragma: no cover
    flow = None


if flow is not None:
    from memscore.flows.params import refuse_secrets, resolve_storage_options

    @checked_flow(name="report", log_prints=True)
    def report(dest: str, out: str, options: ReportOptions | None = None,
               storage_options_secret: str | None = None) -> dict[str, Any]:
        """An offline HTML report of DEST (provenance, distribution, gallery, errors; with human
        data the model-vs-human statistics; with ``options.maps`` memorability maps of every model);
        the page becomes a link artifact (key ``memscore-report``).

        Args:
            dest: memscore output folder (local or URI).
            out: folder or URI for index.html and its files.
            options: what the report shows (ReportOptions; defaults: a gallery of 12 + 12 + 12, no maps).
                ``options.storage_options`` must hold no credentials (parameters are stored in
                Prefect's database): name a Prefect Secret block in storage_options_secret.
            storage_options_secret: name of a Prefect Secret block holding a JSON object of fsspec
                options with the credentials, merged into options.storage_options at run time.
        """
        options = options or ReportOptions()
        refuse_secrets(options.storage_options)
        merged = resolve_storage_options(options.storage_options, storage_options_secret)
        result = build_report(dest, out, options.model_copy(update={"storage_options": merged}))
        _link_artifact(result["outputs"]["index"], dest)
        print(f"wrote {result['outputs']['index']}")
        return result
