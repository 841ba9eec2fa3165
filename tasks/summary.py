"""The text and Markdown summaries of an analysis result (the dict of
:func:`memscore.tasks.analyze.analyze_scores`): what ``memscore analyze`` prints and
what report.md and the Prefect artifact hold. Plain functions of the dict; no I/O.

Undefined numbers print as ``n/a`` followed by the reason; every assumption the
reader made (count columns, response coding, order source, exclusion rules) is
stated in both forms.
"""

from __future__ import annotations

import math
from typing import Any


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _p(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("ci_low") is None:
        return "n/a"
    return f"{_f(entry['ci_low'])}, {_f(entry['ci_high'])}"


def _conf(result: dict[str, Any]) -> int | float:
    value = result["bootstrap"]["confidence"] * 100
    return int(round(value)) if abs(value - round(value)) < 1e-9 else round(value, 2)


def assumptions(result: dict[str, Any]) -> list[str]:
    """What the reader assumed about the human data, one line each (shared by text and Markdown)."""
    table = result.get("measure_table")
    if table:
        lines = [f"human measures: {', '.join(table['measures'])} ({result['human_format']}); the model x measure "
                 f"table has them all, the other lines are for the first, {result['human_measure']}"]
    else:
        lines = [f"human measure: {result['human_measure']} ({result['human_format']})"]
    if result.get("dprime_correction"):
        lines.append(result["dprime_correction"])
    for d in result.get("derived") or []:
        lines.append(f"derived score {d['name']} = {d['expression']} (per image, on the images every one of "
                     f"{', '.join(d['models'])} scored)")
    if result.get("count_columns"):
        cols = result["count_columns"]
        lines.append("count columns: " + ", ".join(f"{k} = {v}" for k, v in cols.items()))
    if result.get("response_coding"):
        lines.append(f"responses: {result['response_coding']}")
    if result.get("order_source"):
        lines.append(f"first showing vs repeat: {result['order_source']}")
    part = result.get("participants")
    if part:
        rules = part["rules"]
        lines.append(f"participants: {part['kept']} kept, {part['excluded']} excluded of {part['total']} "
                     f"(rules: filler false-alarm rate > {rules['max_filler_fa']}, vigilance miss rate > "
                     f"{rules['max_vigilance_miss']}; None = rule off)")
    obs = result.get("observations") or {}
    if obs.get("min") is not None:
        lines.append(f"observations per image: min {obs['min']}, median {_f(obs['median'], 1)}, max {obs['max']}; "
                     f"--min-observations {obs['min_observations']} dropped {obs['excluded']} image(s)")
    return lines


def _corr_line(name: str, entry: dict[str, Any], stat: str, conf: Any) -> str:
    if entry.get(stat) is None:
        return f"{name} = n/a ({entry.get('reason') or 'undefined'})"
    return f"{name} = {_f(entry[stat])}  [{conf}% CI {_ci(entry)}]  p = {_p(entry['p_value'])}"


def _difference_line(c: dict[str, Any], conf: Any, prefix: str = "") -> str:
    """One paired model comparison (``comparisons[]`` of the analysis) as a line of the text summary."""
    d = c["spearman_difference"]
    if d["difference"] is None:
        return f"{prefix}{c['a']} - {c['b']}: Spearman difference n/a ({d['reason']})"
    return (f"{prefix}{c['a']} - {c['b']}: Spearman difference {_f(d['difference'])} [{conf}% CI {_ci(d)}] "
            f"p = {_p(d['p_value'])} (paired bootstrap, same images)")


def _cell(entry: dict[str, Any], stat: str) -> str:
    if entry.get(stat) is None:
        return "n/a"
    return f"{_f(entry[stat])} [{_ci(entry)}]"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _table_rows(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (measure, model, n, Spearman [CI], Pearson [CI][, fraction of the ceiling])."""
    with_fraction = any(r.get("noise_ceiling") for r in table["rows"])
    header = ["measure", "model", "n", "Spearman rho [CI]", "Pearson r [CI]"]
    header += ["rho / noise ceiling [CI]"] if with_fraction else []
    rows = []
    for r in table["rows"]:
        for m in r["models"]:
            row = [r["measure"], m["model"], str(r["n"]), _cell(m["spearman"], "rho"), _cell(m["pearson"], "r")]
            if with_fraction:
                fr = (m.get("fraction_of_noise_ceiling") or {}).get("spearman") or {}
                row.append(_cell(fr, "value"))
            rows.append(row)
    return header, rows


def _ceiling_rows(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (measure, n, splits usable, split-half r, Spearman-Brown, noise ceiling [CI]), Spearman."""
    header = ["measure", "n", "splits usable", "split-half rho", "Spearman-Brown", "noise ceiling [CI]"]
    rows = []
    for r in table["rows"]:
        sh, nc = r.get("split_half") or {}, (r.get("noise_ceiling") or {}).get("spearman") or {}
        ceiling = _cell(nc, "ceiling") if nc.get("ceiling") is not None else f"n/a ({nc.get('reason') or sh.get('reason')})"
        rows.append([r["measure"], str(r["n"]), f"{sh.get('splits_usable')} of {sh.get('splits')}",
                     _f(nc.get("split_half_r")), _f(nc.get("reliability")), ceiling])
    return header, rows


def measure_table_lines(result: dict[str, Any]) -> list[str]:
    """The model x measure table as text (fixed-width columns), its ceilings and its paired comparisons."""
    table = result["measure_table"]
    conf = _conf(result)
    boot = result["bootstrap"]
    header, rows = _table_rows(table)
    lines = [f"model x measure: Spearman and Pearson with {conf}% bootstrap CIs ({boot['resamples']} resamples, "
             f"seed {boot['seed']}); n = images in the row"]
    lines += _grid(header, rows)
    unavailable = {r.get("ceiling_unavailable") for r in table["rows"]}
    if unavailable == {None}:
        lines.append("noise ceiling per measure (Spearman; sqrt of the Spearman-Brown reliability of the mean "
                     "split-half rho):")
        lines += _grid(*_ceiling_rows(table))
    else:
        reasons = "; ".join(sorted(str(u) for u in unavailable if u))
        lines.append(f"noise ceiling: unavailable: {reasons}")
    for r in table["rows"]:
        lines += [_difference_line(c, conf, f"[{r['measure']}] ") for c in r.get("comparisons") or []]
    return lines


def measure_table_markdown(result: dict[str, Any]) -> list[str]:
    """The model x measure section of report.md (lines)."""
    table = result["measure_table"]
    conf = _conf(result)
    boot = result["bootstrap"]
    header, rows = _table_rows(table)
    header = [h.replace("[CI]", f"[{conf}% CI]") for h in header]
    md = ["", "## Model x measure", "",
          f"Spearman and Pearson with percentile bootstrap intervals ({boot['resamples']} resamples, seed "
          f"{boot['seed']}); n = images in the row.", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [""] + [f"- {line}" for line in table["assumptions"]]
    if {r.get("ceiling_unavailable") for r in table["rows"]} == {None}:
        ch, cr = _ceiling_rows(table)
        md += ["", "| " + " | ".join(ch) + " |", "|" + "---|" * len(ch)] + ["| " + " | ".join(r) + " |" for r in cr]
    comparisons = [(r["measure"], c) for r in table["rows"] for c in r.get("comparisons") or []]
    if comparisons:
        md += ["", f"| measure | models | Spearman difference | {conf}% CI | p |", "|---|---|---|---|---|"]
        for measure, c in comparisons:
            d = c["spearman_difference"]
            md.append(f"| {measure} | {c['a']} - {c['b']} | {_f(d['difference'])} | {_ci(d).replace(', ', ' .. ')} | "
                      f"{_p(d['p_value'])} |")
    return md


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The plain-text summary, one statement per line."""
    s, p, k = result["spearman"], result["pearson"], result.get("kendall")
    conf = _conf(result)
    several = len(result.get("models") or []) > 1
    lines = [
        f"{result.get('n_matched', result['n'])} images matched by {result['match']} "
        f"({result['n_unmatched_scores']} scored image(s) without human data, "
        f"{result['n_unmatched_human']} human image(s) without a score); {result['n']} analysed",
        *assumptions(result),
    ]
    if result.get("measure_table"):
        lines += measure_table_lines(result)
    for m in result.get("models") or [{"model": result.get("model"), "spearman": s, "pearson": p, "kendall": k}]:
        if result.get("measure_table"):
            break  # in the table
        prefix = f"[{m['model']}] " if several else ""
        lines.append(prefix + _corr_line("Spearman rho", m["spearman"], "rho", conf))
        lines.append(prefix + _corr_line("Pearson r   ", m["pearson"], "r", conf))
        if m.get("kendall") and m["kendall"].get("tau") is not None:
            lines.append(prefix + f"Kendall tau-b = {_f(m['kendall']['tau'])}  p = {_p(m['kendall']['p_value'])}")
    sh, nc = result.get("split_half"), result.get("noise_ceiling")
    if result.get("measure_table"):
        sh = nc = None  # in the table
    if sh:
        lines.append(
            f"split-half ({sh['splits_usable']} of {sh['splits']} splits usable, {sh['participants']} participants): "
            f"Spearman {_f(sh['spearman_mean'])} (sd {_f(sh['spearman_sd'])}), Pearson {_f(sh['pearson_mean'])} "
            f"(sd {_f(sh['pearson_sd'])}); Spearman-Brown reliability {_f(sh['spearman_brown'])} (Spearman), "
            f"{_f(sh['pearson_brown'])} (Pearson)")
    if nc:
        c = nc["spearman"]
        lines.append(f"noise ceiling (sqrt of the Spearman-Brown reliability): Spearman {_f(c['ceiling'])} "
                     f"[{conf}% CI {_ci(c)}], Pearson {_f(nc['pearson']['ceiling'])}"
                     + (f" ({c['reason']})" if c.get("reason") else ""))
        for m in result.get("models") or []:
            fr = (m.get("fraction_of_noise_ceiling") or {}).get("spearman") or {}
            prefix = f"[{m['model']}] " if several else ""
            value = _f(fr.get("value")) if fr.get("value") is not None else f"n/a ({fr.get('reason')})"
            lines.append(f"{prefix}model rho as a fraction of the noise ceiling: {value} [{conf}% CI {_ci(fr)}]")
    lines += [_difference_line(c, conf) for c in ([] if result.get("measure_table") else result.get("comparisons") or [])]
    if result.get("published_check"):
        checks = ", ".join(f"{c} max |diff| {v:.1e}" for c, v in result["published_check"].items())
        lines.append(f"published rates recomputed from the counts: {checks}")
    if result.get("measure_table") and result.get("groups"):
        lines.append(f"per group ({result['human_measure']}):")
    for g in result.get("groups") or []:
        if "spearman" in g and g["spearman"]["rho"] is not None:
            lines.append(f"  group {g['group']}: n={g['n']}, rho={_f(g['spearman']['rho'])} "
                         f"[{_ci(g['spearman'])}], r={_f(g['pearson']['r'])}")
        elif "spearman" in g:
            lines.append(f"  group {g['group']}: n={g['n']}, rho n/a ({g['spearman']['reason']})")
        else:
            lines.append(f"  group {g['group']}: n={g['n']} (too few images)")
    for w in result.get("warnings") or []:
        lines.append(f"warning: {w}")
    return lines


def summary_markdown(result: dict[str, Any]) -> str:
    """report.md: the same content as :func:`summary_lines`, as Markdown tables."""
    conf = _conf(result)
    boot = result["bootstrap"]
    score_column = result["score_column"]
    score_column = ", ".join(score_column) if isinstance(score_column, list) else score_column
    md = [
        "# memscore analysis",
        "",
        f"- scores: `{result['scores']}` (column `{score_column}`)",
        f"- human data: `{result['human']}` ({result['human_format']}, "
        + (f"measures {', '.join(f'`{m}`' for m in result['measure_table']['measures'])})" if result.get("measure_table")
           else f"measure `{result['human_measure']}`)"),
        f"- images matched by {result['match']}: **{result.get('n_matched', result['n'])}**; unmatched: "
        f"{result['n_unmatched_scores']} scored, {result['n_unmatched_human']} human; analysed: **{result['n']}**",
        *[f"- {line}" for line in assumptions(result)[1:]],
        *(measure_table_markdown(result) + ["", f"## {result['human_measure']} (the first measure)"]
          if result.get("measure_table") else []),
        "",
        f"| model | statistic | value | {conf}% CI (bootstrap, {boot['resamples']} resamples) | p |",
        "|---|---|---|---|---|",
    ]
    for m in result.get("models") or []:
        for label, key, stat in (("Spearman rho", "spearman", "rho"), ("Pearson r", "pearson", "r")):
            e = m[key]
            value = _f(e[stat]) if e[stat] is not None else f"n/a ({e.get('reason')})"
            md.append(f"| {m['model']} | {label} | {value} | {_ci(e).replace(', ', ' .. ')} | {_p(e['p_value'])} |")
        if m.get("kendall") and m["kendall"].get("tau") is not None:
            md.append(f"| {m['model']} | Kendall tau-b | {_f(m['kendall']['tau'])} | | {_p(m['kendall']['p_value'])} |")
    if result.get("comparisons"):
        md += ["", "## Paired model comparisons (same images, same bootstrap draws)", "",
               f"| models | Spearman difference | {conf}% CI | p | Pearson difference | {conf}% CI | p |",
               "|---|---|---|---|---|---|---|"]
        for c in result["comparisons"]:
            ds, dp = c["spearman_difference"], c["pearson_difference"]
            md.append(f"| {c['a']} - {c['b']} | {_f(ds['difference'])} | {_ci(ds).replace(', ', ' .. ')} | "
                      f"{_p(ds['p_value'])} | {_f(dp['difference'])} | {_ci(dp).replace(', ', ' .. ')} | "
                      f"{_p(dp['p_value'])} |")
    sh, nc = result.get("split_half"), result.get("noise_ceiling")
    if sh:
        md += ["", "## Human split-half reliability and noise ceiling", "",
               f"{sh['splits_usable']} of {sh['splits']} random splits of {sh['participants']} participants usable: "
               f"mean split-half Spearman {_f(sh['spearman_mean'])} (sd {_f(sh['spearman_sd'])}), Pearson "
               f"{_f(sh['pearson_mean'])} (sd {_f(sh['pearson_sd'])}); Spearman-Brown reliability "
               f"{_f(sh['spearman_brown'])} (Spearman), {_f(sh['pearson_brown'])} (Pearson)."]
    if nc:
        md += ["", "The noise ceiling is the square root of the Spearman-Brown reliability: the correlation a model "
               "that knew each image's true memorability could expect with this (noisy) human measure.", "",
               f"| | split-half r | reliability | noise ceiling | {conf}% CI |", "|---|---|---|---|---|"]
        for key in ("spearman", "pearson"):
            c = nc[key]
            md.append(f"| {key} | {_f(c['split_half_r'])} | {_f(c['reliability'])} | "
                      f"{_f(c['ceiling']) if c['ceiling'] is not None else 'n/a (' + str(c['reason']) + ')'} | "
                      f"{_ci(c).replace(', ', ' .. ')} |")
        md += ["", f"| model | fraction of the noise ceiling (Spearman) | {conf}% CI | (Pearson) | {conf}% CI |",
               "|---|---|---|---|---|"]
        for m in result.get("models") or []:
            fr = m.get("fraction_of_noise_ceiling") or {}
            fs, fp = fr.get("spearman") or {}, fr.get("pearson") or {}
            md.append(f"| {m['model']} | {_f(fs.get('value'))} | {_ci(fs).replace(', ', ' .. ')} | "
                      f"{_f(fp.get('value'))} | {_ci(fp).replace(', ', ' .. ')} |")
    part = result.get("participants")
    if part:
        rules = part["rules"]
        md += ["", "## Participant exclusion", "",
               f"- rules: filler false-alarm rate > {rules['max_filler_fa']}; vigilance miss rate > "
               f"{rules['max_vigilance_miss']} (None: rule off)",
               f"- {part['total']} participants, {part['excluded']} excluded, {part['kept']} kept"
               + (f" (excluded: {', '.join(map(str, part['excluded_ids'][:20]))}"
                  f"{' ...' if len(part['excluded_ids']) > 20 else ''})" if part['excluded_ids'] else "")]
    if result.get("groups"):
        md += ["", "## Per group", "", "| group | n | Spearman rho | CI | Pearson r |", "|---|---|---|---|---|"]
        for g in result["groups"]:
            if "spearman" in g:
                md.append(f"| {g['group']} | {g['n']} | {_f(g['spearman']['rho'])} | "
                          f"{_ci(g['spearman']).replace(', ', ' .. ')} | {_f(g['pearson']['r'])} |")
            else:
                md.append(f"| {g['group']} | {g['n']} | n/a | | |")
    if result.get("warnings"):
        md += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    return "\n".join(md) + "\n"


__all__ = ["assumptions", "measure_table_lines", "measure_table_markdown", "summary_lines", "summary_markdown"]
