"""Matching scored images to human data by relative path, file name or stem: the temp
table ``joined`` (one row per human image and model), with the reason when no key
matches without ambiguity."""

from __future__ import annotations

from typing import Any

import duckdb

from memscore.storage.relations import MATCH_MODES, key_sql, q
from memscore.tasks.analysis_options import AnalysisError


def _match_counts(con: duckdb.DuckDBPyConnection, mode: str) -> dict[str, Any]:
    k = key_sql("image", mode)
    row = con.sql(
        f"""WITH s AS (SELECT DISTINCT image, {k} AS k FROM model_scores), h AS (SELECT image, {k} AS k FROM human)
        SELECT (SELECT count(DISTINCT k) FROM s WHERE k IN (SELECT k FROM h)),
               (SELECT count(*) - count(DISTINCT k) FROM s), (SELECT count(*) - count(DISTINCT k) FROM h),
               (SELECT list(image ORDER BY image)[1:2] FROM s WHERE k = (SELECT min(k) FROM s GROUP BY k
                 HAVING count(*) > 1 ORDER BY 1 LIMIT 1)),
               (SELECT list(image ORDER BY image)[1:2] FROM h WHERE k = (SELECT min(k) FROM h GROUP BY k
                 HAVING count(*) > 1 ORDER BY 1 LIMIT 1))"""
    ).fetchall()[0]
    return {"matched": int(row[0]), "dup_scores": int(row[1]), "dup_human": int(row[2]),
            "dup_examples": {"scores": list(row[3] or []), "human": list(row[4] or [])}}


def _shared_key_message(mode: str, c: dict[str, Any]) -> str:
    side = "scores" if c["dup_scores"] else "human data"
    example = c["dup_examples"]["scores" if c["dup_scores"] else "human"]
    what = {"name": "file name", "stem": "file name without extension", "path": "path"}[mode]
    return (f"by {what} {c['matched']} image(s) would match, but {c['dup_scores'] or c['dup_human']} image(s) of the "
            f"{side} share a {what} with another (e.g. {' and '.join(example)})")


def match_images(con: duckdb.DuckDBPyConnection, mode: str) -> dict[str, Any]:
    """Temp table ``joined`` (image, score_image, key, model, score, human, ...): one row per
    human image and model; ``auto`` takes the most specific of path, name, stem that
    matches the most images without ambiguity."""
    if mode == "auto":
        best, best_n, shared = None, 0, []
        for m in MATCH_MODES:
            c = _match_counts(con, m)
            if c["dup_scores"] or c["dup_human"]:
                if c["matched"]:
                    shared.append(_shared_key_message(m, c))
                continue
            if c["matched"] > best_n:
                best, best_n = m, c["matched"]
        if best is None:
            if shared:
                raise AnalysisError(f"--match auto found no unambiguous key: {'; '.join(shared)}; give ids that agree "
                                    f"as relative paths on both sides and use --match path, or make the names unique")
            raise AnalysisError("no image of the scores matches the human data by path, file name or stem "
                                "(check --id-column / --human-id-column)")
        mode = best
    elif mode not in MATCH_MODES:
        raise AnalysisError(f"unknown --match {mode!r} (choose from auto, {', '.join(MATCH_MODES)})")
    counts = _match_counts(con, mode)
    for side, n in (("scores", counts["dup_scores"]), ("human data", counts["dup_human"])):
        if n:
            raise AnalysisError(f"matching by {mode}: {n} image(s) of the {side} share a {mode} with another "
                                f"(e.g. {' and '.join(counts['dup_examples']['scores' if side == 'scores' else 'human'])}); "
                                f"match by a more specific key (--match path)")
    reserved = {"image", "human", "score", "score_image", "key", "model"}
    human_cols = [c for c in con.sql("SELECT * FROM human LIMIT 0").columns if c.lower() not in reserved]
    score_cols = [c for c in con.sql("SELECT * FROM model_scores LIMIT 0").columns
                  if c.lower() not in reserved and c.lower() not in {h.lower() for h in human_cols}]
    con.sql(
        f"""CREATE OR REPLACE TEMP TABLE joined AS
        SELECT h.image AS image, s.image AS score_image, {key_sql('h.image', mode)} AS key, s.model, s.score, h.human
               {''.join(f', h.{q(c)}' for c in human_cols)}{''.join(f', s.{q(c)}' for c in score_cols)}
        FROM human h JOIN model_scores s ON {key_sql('h.image', mode)} = {key_sql('s.image', mode)}"""
    )
    row = con.sql(
        f"""SELECT (SELECT count(DISTINCT image) FROM joined),
          (SELECT count(DISTINCT image) FROM model_scores WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT count(*) FROM human WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT list(DISTINCT image ORDER BY image)[1:3] FROM model_scores WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined)),
          (SELECT list(image ORDER BY image)[1:3] FROM human WHERE {key_sql('image', mode)} NOT IN (SELECT key FROM joined))"""
    ).fetchall()[0]
    if not row[0]:
        raise AnalysisError(f"no image of the scores matches the human data by {mode} "
                            f"(e.g. scores: {', '.join(row[3] or [])}; human: {', '.join(row[4] or [])})")
    return {"match": mode, "n": int(row[0]), "n_unmatched_scores": int(row[1]), "n_unmatched_human": int(row[2]),
            "unmatched_examples": {"scores": list(row[3] or []), "human": list(row[4] or [])}}


