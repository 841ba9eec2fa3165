"""The ``report`` flow: DEST (and optional human data) in, an offline HTML report out.

:func:`build_report` is the plain function (no Prefect); :func:`report` is the
Prefect flow around it, which links the page in a Markdown artifact. The steps
live in ``tasks/report_*.py``: DuckDB queries over DEST (:mod:`tasks.report_data`),
figures (:mod:`tasks.report_figures`), gallery thumbnails (:mod:`tasks.report_gallery`),
Grad-CAM maps (:mod:`tasks.report_maps`) and the page (:mod:`tasks.report_html`).
The model-vs-human numbers are :func:`flows.analyze.analyze_scores`'s result, the
code behind ``memscore analyze``, so the page and ``memscore analyze --json`` agree.

Output folder: ``index.html``, ``report.json`` (everything the page shows),
``figures/*.png|svg`` and ``images/*.jpg`` (thumbnails, larger views, maps).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from memscore.flows.analyze import AnalysisOptions, analyze_scores
from memscore.storage.human import lit
from memscore.tasks import report_data as data
from memscore.tasks import report_figures as figures
from memscore.tasks.report_data import ReportError
from memscore.tasks.report_gallery import THUMB_PX, VIEW_PX, make_thumbnails
from memscore.tasks.report_html import render

SCATTER_MAX_POINTS = 100_000


@dataclass
class ReportOptions:
    """What ``memscore report`` shows; ``analysis`` holds ``memscore analyze``'s options for ``human``."""

    model: str | None = None
    human: str | None = None
    analysis: AnalysisOptions = field(default_factory=AnalysisOptions)
    group_column: str | None = None
    top: int = 12
    sample: int = 12
    seed: int = 0
    bins: int = 40
    maps: bool = False
    maps_device: str = "cpu"
    error_examples: int = 5
    memory_limit: str | None = "512MB"  # DuckDB's memory_limit for the report's queries (None: its default)
    storage_options: dict[str, Any] | None = None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("memscore")
    except Exception:  # noqa: BLE001 - a checkout that is not installed
        return "(not installed)"


def _pick_number(entry: Any, *keys: str) -> float | None:
    """The first of ``keys`` in ``entry`` (a dict) that holds a number; None otherwise."""
    if not isinstance(entry, dict):
        return None
    for key in keys:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _ceilings(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The human ceiling rows of an analysis result, read by key name (absent keys are skipped):
    the mean split-half Spearman, its Spearman-Brown correction (the reliability) and the noise
    ceiling (sqrt of the reliability, docs/analysis.md) with its interval."""
    rows: list[dict[str, Any]] = []
    sh = result.get("split_half") or {}
    if _pick_number(sh, "spearman_mean") is not None:
        rows.append({"label": "human split-half ρ (mean)", "short": "split-half", "value": sh["spearman_mean"],
                     "ci_low": None, "ci_high": None,
                     "note": f"{sh.get('splits')} splits of {sh.get('participants')} participants, "
                             f"sd {figures._fmt(sh.get('spearman_sd'))}"})
    if _pick_number(sh, "spearman_brown") is not None:
        rows.append({"label": "Spearman-Brown corrected (reliability)", "short": "Spearman-Brown",
                     "value": sh["spearman_brown"], "ci_low": None, "ci_high": None,
                     "note": "split-half reliability of the full group"})
    noise = result.get("noise_ceiling")
    entry = noise.get("spearman") if isinstance(noise, dict) and isinstance(noise.get("spearman"), dict) else noise
    value = _pick_number(entry, "ceiling", "value") if isinstance(entry, dict) else (
        float(noise) if isinstance(noise, (int, float)) else None)
    if value is not None:
        convention = noise.get("convention") if isinstance(noise, dict) else None
        rows.append({"label": "noise ceiling (√ reliability)", "short": "noise ceiling", "value": value,
                     "ci_low": _pick_number(entry, "ci_low"), "ci_high": _pick_number(entry, "ci_high"),
                     "note": str(convention or "the highest Spearman a model can expect")})
    return rows


def _fraction(result: dict[str, Any]) -> dict[str, Any] | None:
    """The model's rho as a fraction of the ceiling: ``fraction_of_noise_ceiling.spearman`` (or the
    older ``fraction_of_ceiling``), as {value, ci_low, ci_high, label}; None when absent."""
    frac = result.get("fraction_of_noise_ceiling")
    entry = frac.get("spearman") if isinstance(frac, dict) else None
    value = _pick_number(entry, "value")
    if value is not None:
        return {"value": value, "ci_low": _pick_number(entry, "ci_low"), "ci_high": _pick_number(entry, "ci_high"),
                "label": "model ρ / noise ceiling"}
    old = result.get("fraction_of_ceiling")
    if isinstance(old, (int, float)):
        return {"value": float(old), "ci_low": None, "ci_high": None, "label": "model ρ / Spearman-Brown ceiling"}
    return None


def _human_section(dest: str, model: str, options: ReportOptions, out: Path, gallery_paths: list[str],
                   scratch: str) -> tuple[dict[str, Any], list[dict], dict[str, tuple[float, int]], list[str]]:
    """The analysis result, its figures, the human score and rank of each gallery path, notes."""
    aopts = options.analysis.model_copy(update=dict(model=model, group_column=options.group_column,
                                                    storage_options=options.storage_options))
    con = data.connect(options.memory_limit, scratch)
    notes: list[str] = []
    try:
        result = analyze_scores(dest, options.human, aopts, con=con)
        n = int(result.get("n") or 0)
        group_col = options.group_column if options.group_column and result.get("groups") else None
        cols = "j.score, j.human" + (f', j."{group_col}"::VARCHAR AS grp' if group_col else "")
        # the images the statistics used: `analysed` (after --min-observations), this model's rows
        used = _analysed_sql(con, model)
        sample = f" USING SAMPLE {SCATTER_MAX_POINTS} ROWS REPEATABLE ({options.seed})" if n > SCATTER_MAX_POINTS else ""
        if sample:
            notes.append(f"the scatter shows a random {SCATTER_MAX_POINTS:,} of the {n:,} analysed images")
        pairs = con.sql(f"SELECT {cols} FROM joined j WHERE {used}{sample}").fetchnumpy()
        ranks: dict[str, tuple[float, int]] = {}
        if gallery_paths:
            wanted = ", ".join(lit(p) for p in gallery_paths)
            for path, human, rank in con.sql(
                    f"SELECT score_image, human, rank FROM (SELECT j.score_image, j.human, rank() OVER "
                    f"(ORDER BY j.human DESC) AS rank FROM joined j WHERE {used}) "
                    f"WHERE score_image IN ({wanted})").fetchall():
                ranks[path] = (float(human), int(rank))
    finally:
        con.close()
    score_arr, human_arr = np.asarray(pairs["score"], float), np.asarray(pairs["human"], float)
    groups = np.asarray(pairs["grp"]).astype(str) if "grp" in pairs else None
    figs = []
    measure = str(result.get("human_measure") or "score")
    f = figures.scatter_figure(out, score_arr, human_arr, result, model, measure,
                               groups=groups if groups is not None and len(set(groups.tolist())) <= 10 else None)
    figs.append({**f, "title": "Model vs human, one point per matched image"})
    ceilings = _ceilings(result)
    sp = result.get("spearman") or {}
    if ceilings and sp.get("rho") is not None:
        bars = [(f"{model} ρ", sp["rho"], sp.get("ci_low"), sp.get("ci_high"))]
        bars += [(c["short"], c["value"], c["ci_low"], c["ci_high"]) for c in ceilings]
        figs.append({**figures.ceiling_figure(out, bars), "title": "Model Spearman ρ beside the human ceiling"})
    if groups is not None and result.get("groups"):
        stats = [g for g in result["groups"] if g.get("spearman")]
        if stats:
            figs.append({**figures.group_scatter_figure(out, score_arr, human_arr, groups, stats),
                         "title": f"Model vs human per {options.group_column}"})
    return result, figs, ranks, notes


def _analysed_sql(con: duckdb.DuckDBPyConnection, model: str) -> str:
    """SQL condition on ``joined j``: this model's rows of the images the analysis used (its
    ``analysed`` table when there is one, else every matched image)."""
    tables = {r[0] for r in con.sql("SELECT table_name FROM duckdb_tables() UNION ALL "
                                    "SELECT view_name FROM duckdb_views()").fetchall()}
    columns = set(con.sql("SELECT * FROM joined LIMIT 0").columns)
    cond = [f"j.model = {lit(model)}"] if "model" in columns else []
    if "analysed" in tables:
        cond.append("j.image IN (SELECT image FROM analysed)")
    return " AND ".join(cond) or "TRUE"


def _runs_note(prov: dict[str, Any], con: duckdb.DuckDBPyConnection, tables: data.DestTables) -> str | None:
    """Say which runs in the parts have no summary in DEST/runs (what is then unknown)."""
    if "run_id" not in tables.columns:
        return "The scores have no run_id column; run summaries cannot be matched."
    in_parts = {r[0] for r in con.sql(f"SELECT DISTINCT run_id FROM {tables.scores_sql}").fetchall()}
    if tables.errors_sql:
        in_parts |= {r[0] for r in con.sql(f"SELECT DISTINCT run_id FROM {tables.errors_sql}").fetchall()}
    known = {str(r.get("run_id")) for r in prov["runs"]}
    lacking = sorted(in_parts - known)
    if not lacking:
        return None
    return (f"{len(lacking)} of {len(in_parts)} run(s) in DEST have no summary in DEST/runs "
            f"(runs made before memscore wrote them, or stopped before their end; e.g. {', '.join(lacking[:3])}): "
            f"their source, device, skipped count and throughput are not stored; rows, models, weights, "
            f"times and failures above come from the parts.")


def build_report(dest: str, out: str, options: ReportOptions | None = None) -> dict[str, Any]:
    """Write the report of ``dest`` (a memscore output folder, local or URI) to ``out``.

    ``out`` is a local folder (created) or an fsspec URI (the report is built in a
    temporary folder and copied there). Returns the report's data (as ``report.json``)
    plus ``"outputs"``: the paths written. Raises :class:`ReportError` (one line) when
    DEST has no scores, and :class:`flows.analyze.AnalysisError` /
    :class:`storage.human.HumanDataError` for human data that does not fit (e.g. no image
    in common).
    """
    options = options or ReportOptions()
    if options.top < 0 or options.sample < 0:
        raise ReportError("--top and --sample must be zero or more")
    started = time.perf_counter()
    remote = "://" in out and not out.startswith("file://")
    with tempfile.TemporaryDirectory(prefix="memscore-report-") as scratch:
        folder = Path(scratch) / "out" if remote else Path(out.removeprefix("file://"))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ReportError(f"cannot write {out}: {error}") from error
        spill = Path(scratch) / "duckdb-spill"
        report = _build(dest, folder, options, str(spill))
        report["seconds"] = round(time.perf_counter() - started, 3)
        (folder / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
        (folder / "index.html").write_text(render(report), encoding="utf-8")
        if remote:
            from memscore.storage.uris import open_location

            try:
                location = open_location(out, options.storage_options)
                location.fs.put(str(folder) + "/", location.root + "/", recursive=True)
            except Exception as error:  # noqa: BLE001 - no such bucket, credentials
                raise ReportError(f"cannot write {out}: {error}") from error
            index = location.full_uri(location.join("index.html"))
        else:
            index = str(folder / "index.html")
    report["outputs"] = {"index": index, "json": index.rsplit("/", 1)[0] + "/report.json"}
    return report


def _build(dest: str, out: Path, options: ReportOptions, scratch: str) -> dict[str, Any]:
    con = data.connect(options.memory_limit, scratch)
    try:
        tables = data.open_dest(con, dest, options.storage_options)
        model = data.choose_model(con, tables, options.model)
        rel = f"(SELECT * FROM {tables.scores_sql} WHERE model = {lit(model)})"
        warnings: list[str] = []
        prov = data.provenance(con, tables)
        prov["runs_note"] = _runs_note(prov, con, tables)
        # distribution
        group_in_scores = bool(options.group_column and options.group_column in tables.columns)
        group_note = None
        if options.group_column and not group_in_scores:
            group_note = (f"histograms grouped by top-level folder: {options.group_column!r} is not a column of "
                          f"the scores (it groups the human analysis only)")
        group_sql, label = data.group_expression(tables.columns, options.group_column if group_in_scores else None)
        overall = data.score_summary(con, rel)
        bins = max(1, min(options.bins, max(5, int(2 * math.sqrt(overall["n"])))))  # sparse archives: fewer bins
        hist = data.histograms(con, rel, group_sql, bins=bins)
        dist_figs = [{**figures.histogram_figure(out, hist["edges"], hist["overall"], overall, model),
                      "title": "Score distribution, all images"}]
        if len(hist["groups"]) > 1:
            dist_figs.append({**figures.group_histograms_figure(out, hist["edges"], hist["groups"], label),
                              "title": f"Score distribution per {label}"})
        distribution = {"label": label, "overall": overall, "edges": hist["edges"], "counts": hist["overall"],
                        "rows": [["all images", overall]] + [[g["group"], g["summary"]] for g in hist["groups"]],
                        "groups": hist["groups"], "n_groups": hist["n_groups"], "pooled": hist["pooled"],
                        "group_note": group_note}
        # gallery rows (images are read below, only these)
        picked = data.gallery_rows(con, rel, options.top, options.sample, options.seed)
        gallery_paths = [r["path"] for rows in picked.values() for r in rows]
        # human data: memscore analyze's own code
        human = None
        human_figs: list[dict] = []
        ranks: dict[str, tuple[float, int]] = {}
        if options.human:
            human, human_figs, ranks, notes = _human_section(dest, model, options, out, gallery_paths, scratch)
            warnings.extend(notes)
        # errors
        errors = {"counts": prov["failed"], "examples": data.error_examples(con, tables, model, options.error_examples),
                  "per_reason": options.error_examples}
    finally:
        con.close()
    maps = None
    maker = None
    if options.maps:
        from memscore.tasks.report_maps import load_map_maker

        weights_in_dest = {s["weights"] for s in prov["scored"] if s["model"] == model}
        maker = load_map_maker(model, None, options.maps_device)
        maps = {"model": maker.model_name, "layer": maker.layer_name, "method": "Grad-CAM",
                "library": "captum.attr.LayerGradCam", "describe": maker.describe(), "weights": maker.weights_digest,
                "input": f"{maker.loaded.spec.input_size} x {maker.loaded.spec.input_size} center crop"}
        if weights_in_dest and maker.weights_digest not in weights_in_dest:
            warnings.append(f"maps use {model}'s published weights ({maker.weights_digest[:12]}), not the weights "
                            f"DEST was scored with ({', '.join(sorted(w[:12] for w in weights_in_dest))})")
    titles = {"top": f"{options.top} most memorable", "bottom": f"{options.top} least memorable",
              "random": f"{options.sample} at random (seed {options.seed}, excluding the above)"}
    gallery = []
    for key in ("top", "bottom", "random"):
        rows = []
        for r in picked[key]:
            entry = {**r, "score": float(r["score"]), "thumb": make_thumbnails(r["uri"], out, options.storage_options),
                     "human": None, "human_rank": None, "map": None}
            if r["path"] in ranks:
                entry["human"], entry["human_rank"] = ranks[r["path"]]
            if maker is not None:
                from memscore.tasks.report_maps import make_map

                entry["map"] = make_map(maker, r["uri"], out, options.storage_options)
            rows.append(entry)
        if rows:
            gallery.append({"key": key, "title": titles[key], "rows": rows})
    missing = sum(1 for b in gallery for g in b["rows"] if g["thumb"]["status"] != "ok")
    if missing:
        warnings.append(f"{missing} gallery image(s) could not be read from the archive (moved, deleted or "
                        f"unreadable since scoring); shown as 'missing' or 'unreadable'")
    conf = int(round(100 * ((human or {}).get("bootstrap") or {}).get("confidence", 0.95)))
    return {
        "model": model, "dest": dest, "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "memscore_version": _version(), "provenance": prov, "distribution": distribution, "human": human,
        "ceilings": _ceilings(human) if human else [], "fraction": _fraction(human) if human else None,
        "conf": conf, "gallery": gallery, "maps": maps,
        "errors": errors, "figures": {"distribution": dist_figs, "human": human_figs}, "warnings": warnings,
        "thumb_px": THUMB_PX, "view_px": VIEW_PX,
        "options": {"top": options.top, "sample": options.sample, "seed": options.seed, "bins": options.bins,
                    "group_column": options.group_column, "human": options.human, "maps": options.maps},
    }


# ---------------------------------------------------------------------------
# the Prefect flow

try:  # keep the plain function importable without Prefect
    from prefect import flow
except ImportError:  # pragma: no cover
    flow = None


if flow is not None:

    @flow(name="report", log_prints=True)
    def report(dest: str, out: str, human: str | None = None, model: str | None = None,
               group_column: str | None = None, top: int = 12, sample: int = 12, seed: int = 0,
               bins: int = 40, maps: bool = False, maps_device: str = "cpu", memory_limit: str | None = "512MB",
               analysis: dict[str, Any] | None = None,
               storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
        """An offline HTML report of DEST (provenance, distribution, gallery, errors; with human
        data the model-vs-human statistics); the page's path becomes a Markdown artifact.

        ``analysis``: :class:`flows.analyze.AnalysisOptions` fields for the human data
        (human_format, human_measure, match, bootstrap, splits, ...); the seed is ``seed``."""
        options = ReportOptions(model=model, human=human, group_column=group_column, top=top, sample=sample,
                                seed=seed, bins=bins, maps=maps, maps_device=maps_device, memory_limit=memory_limit,
                                storage_options=storage_options,
                                analysis=AnalysisOptions(**{**(analysis or {}), "seed": seed}))
        result = build_report(dest, out, options)
        try:
            from prefect.artifacts import create_markdown_artifact

            create_markdown_artifact(
                markdown=f"# memscore report\n\n[{result['outputs']['index']}]({result['outputs']['index']})\n",
                key="memscore-report", description=f"memscore report of {dest}")
        except Exception as error:  # noqa: BLE001 - an artifact never fails a finished report
            print(f"could not create the report artifact: {error}")
        print(f"wrote {result['outputs']['index']}")
        return result
