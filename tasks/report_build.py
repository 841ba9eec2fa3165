"""Building the report: DEST (and optional human data) in, ``index.html`` and its files out.

:func:`build_report` is the whole pipeline as a plain function (no Prefect): DuckDB
queries over DEST (:mod:`memscore.tasks.report_data`), the histograms
(:mod:`memscore.tasks.report_figures`), the model-vs-human section
(:mod:`memscore.tasks.report_human`), the gallery thumbnails
(:mod:`memscore.tasks.report_gallery`), the memorability maps of every model in DEST
(:mod:`memscore.tasks.report_maps`) and the page (:mod:`memscore.tasks.report_html`).
The options are one :class:`memscore.tasks.report_options.ReportOptions`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from memscore.storage.human import lit
from memscore.tasks import report_data as data
from memscore.tasks import report_figures as figures
from memscore.tasks.report_data import ReportError
from memscore.tasks.report_gallery import THUMB_PX, VIEW_PX, make_thumbnails
from memscore.tasks.report_html import render
from memscore.tasks.report_human import ceilings, fraction, human_section
from memscore.tasks.report_options import ReportOptions


def memscore_version() -> str:
    """The installed memscore's version (``(not installed)`` for a bare checkout)."""
    try:
        from importlib.metadata import version

        return version("memscore")
    except Exception:  # noqa: BLE001 - a checkout that is not installed
        return "(not installed)"


def runs_note(prov: dict[str, Any], con: duckdb.DuckDBPyConnection, tables: data.DestTables) -> str | None:
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


def map_models(scored: list[dict[str, Any]], options: ReportOptions) -> tuple[list[tuple[str, str | None, set[str]]],
                                                                               list[str]]:
    """The models to map: (registered name, weights file or None, DEST's weights digests for it) for
    each model with rows in DEST (or each of ``options.maps_models``), and warnings for names that
    are not registered models or not in DEST."""
    from memscore.models.registry import UnknownModelError, get_model_spec

    def canonical(name: str) -> str | None:
        try:
            return get_model_spec(name).name
        except UnknownModelError:
            return None

    digests: dict[str, set[str]] = {}
    warnings: list[str] = []
    for s in scored:
        name = canonical(s["model"])
        if name is None:
            warnings.append(f"no maps for {s['model']}: not a registered model (memscore models lists them)")
            continue
        digests.setdefault(name, set()).update({s["weights"]} if s.get("weights") else set())
    weights = {canonical(k) or k: v for k, v in options.maps_weights.items()}
    for name in sorted(set(weights) - set(digests)):
        warnings.append(f"--maps-weights names {name}, which has no scores in DEST")
    wanted = sorted(digests)
    if options.maps_models is not None:
        asked = [canonical(m) or m for m in options.maps_models]
        for name in asked:
            if name not in digests:
                raise ReportError(f"--maps-models: DEST has no scores of {name!r} (models: {', '.join(wanted)})")
        wanted = list(dict.fromkeys(asked))
    return [(name, weights.get(name), digests[name]) for name in wanted], warnings


def build_report(dest: str, out: str, options: ReportOptions | None = None) -> dict[str, Any]:
    """Write the report of ``dest`` (a memscore output folder, local or URI) to ``out``.

    ``out`` is a local folder (created) or an fsspec URI (the report is built in a
    temporary folder and copied there). Returns the report's data (as ``report.json``)
    plus ``"outputs"``: the paths written. Raises :class:`ReportError` (one line) when
    DEST has no scores, :class:`memscore.models.devices.DeviceUnavailableError` when ``options.maps``
    asks for a device this machine lacks, and :class:`memscore.tasks.analyze.AnalysisError` /
    :class:`memscore.storage.human.HumanDataError` for human data that does not fit (e.g. no
    image in common).
    """
    options = options or ReportOptions()
    if options.maps:  # the maps' device resolved as memscore score does: not present -> one line, before any work
        from memscore.models.devices import resolve_device

        options = options.model_copy(update={"maps_device": str(resolve_device(options.maps_device))})
    started = time.perf_counter()
    remote = "://" in out and not out.startswith("file://")
    with tempfile.TemporaryDirectory(prefix="memscore-report-") as scratch:
        folder = Path(scratch) / "out" if remote else Path(out.removeprefix("file://"))
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ReportError(f"cannot write {out}: {error}") from error
        try:
            report = assemble(dest, folder, options, str(Path(scratch) / "duckdb-spill"))
            report["seconds"] = round(time.perf_counter() - started, 3)
            (folder / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
            (folder / "index.html").write_text(render(report), encoding="utf-8")
        except BaseException:
            if created:  # a failed report leaves no half-written folder behind (one the user had stays)
                shutil.rmtree(folder, ignore_errors=True)
            raise
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


def assemble(dest: str, out: Path, options: ReportOptions, scratch: str) -> dict[str, Any]:
    """The report's data (what ``report.json`` holds); figures, thumbnails and maps written under ``out``."""
    con = data.connect(options.memory_limit, scratch)
    try:
        tables = data.open_dest(con, dest, options.storage_options)
        model = data.choose_model(con, tables, options.model)
        rel = f"(SELECT * FROM {tables.scores_sql} WHERE model = {lit(model)})"
        warnings: list[str] = list(options.notes)
        prov = data.provenance(con, tables)
        prov["runs_note"] = runs_note(prov, con, tables)
        distribution, dist_figs = _distribution(con, tables, rel, model, options, out)
        picked = data.gallery_rows(con, rel, options.top, options.sample, options.seed)  # images read below: these
        gallery_paths = [r["path"] for rows in picked.values() for r in rows]
        human, human_figs, ranks = None, [], {}
        if options.human:  # memscore analyze's own code
            human, human_figs, ranks, notes = human_section(dest, model, options, out, gallery_paths, scratch)
            warnings.extend(notes)
        errors = {"counts": prov["failed"], "examples": data.error_examples(con, tables, model, options.error_examples),
                  "per_reason": options.error_examples}
    finally:
        con.close()
    maps = None
    per_uri: dict[str, dict[str, dict]] = {}
    if options.maps:
        from memscore.tasks.report_maps import gallery_maps

        models, notes = map_models(prov["scored"], options)
        uris = list(dict.fromkeys(r["uri"] for rows in picked.values() for r in rows))
        infos, per_uri, map_notes = gallery_maps(models, uris, out, method=options.maps_method,
                                                 device=options.maps_device, grid=options.occlusion_grid,
                                                 storage_options=options.storage_options)
        warnings.extend(notes + map_notes)
        maps = {"method": options.maps_method, "device": options.maps_device, "occlusion_grid": options.occlusion_grid,
                "models": infos}
    gallery = _gallery(picked, ranks, per_uri, out, options)
    missing = sum(1 for b in gallery for g in b["rows"] if g["thumb"]["status"] != "ok")
    if missing:
        warnings.append(f"{missing} gallery image(s) could not be read from the archive (moved, deleted or "
                        f"unreadable since scoring); shown as 'missing' or 'unreadable'")
    conf = int(round(100 * ((human or {}).get("bootstrap") or {}).get("confidence", 0.95)))
    return {
        "model": model, "dest": dest, "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "memscore_version": memscore_version(), "provenance": prov, "distribution": distribution, "human": human,
        "ceilings": ceilings(human) if human else [], "fraction": fraction(human) if human else None,
        "conf": conf, "gallery": gallery, "maps": maps,
        "errors": errors, "figures": {"distribution": dist_figs, "human": human_figs}, "warnings": warnings,
        "thumb_px": THUMB_PX, "view_px": VIEW_PX,
        "options": options.model_dump(mode="json", exclude={"storage_options", "analysis", "notes"}),
    }


def _distribution(con: duckdb.DuckDBPyConnection, tables: data.DestTables, rel: str, model: str,
                  options: ReportOptions, out: Path) -> tuple[dict[str, Any], list[dict]]:
    """The distribution section's data and its histogram figures."""
    group_in_scores = bool(options.group_column and options.group_column in tables.columns)
    group_note = None
    if options.group_column and not group_in_scores:
        group_note = (f"histograms grouped by top-level folder: {options.group_column!r} is not a column of "
                      f"the scores (it groups the human analysis only)")
    group_sql, label = data.group_expression(tables.columns, options.group_column if group_in_scores else None)
    overall = data.score_summary(con, rel)
    bins = max(1, min(options.bins, max(5, int(2 * math.sqrt(overall["n"])))))  # sparse archives: fewer bins
    hist = data.histograms(con, rel, group_sql, bins=bins)
    figs = [{**figures.histogram_figure(out, hist["edges"], hist["overall"], overall, model),
             "title": "Score distribution, all images"}]
    if len(hist["groups"]) > 1:
        figs.append({**figures.group_histograms_figure(out, hist["edges"], hist["groups"], label),
                     "title": f"Score distribution per {label}"})
    distribution = {"label": label, "overall": overall, "edges": hist["edges"], "counts": hist["overall"],
                    "rows": [["all images", overall]] + [[g["group"], g["summary"]] for g in hist["groups"]],
                    "groups": hist["groups"], "n_groups": hist["n_groups"], "pooled": hist["pooled"],
                    "group_note": group_note}
    return distribution, figs


def _gallery(picked: dict[str, list[dict]], ranks: dict[str, tuple[float, int]],
             per_uri: dict[str, dict[str, dict]], out: Path, options: ReportOptions) -> list[dict[str, Any]]:
    """The gallery blocks (top, bottom, random): each row with its thumbnail, human rank and maps."""
    titles = {"top": f"{options.top} most memorable", "bottom": f"{options.top} least memorable",
              "random": f"{options.sample} at random (seed {options.seed}, excluding the above)"}
    gallery = []
    for key in ("top", "bottom", "random"):
        rows = []
        for r in picked[key]:
            entry = {**r, "score": float(r["score"]), "thumb": make_thumbnails(r["uri"], out, options.storage_options),
                     "human": None, "human_rank": None, "maps": per_uri.get(r["uri"], {})}
            if r["path"] in ranks:
                entry["human"], entry["human_rank"] = ranks[r["path"]]
            rows.append(entry)
        if rows:
            gallery.append({"key": key, "title": titles[key], "rows": rows})
    return gallery
