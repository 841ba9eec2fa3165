"""The report page: one self-contained HTML file rendered with Jinja2 (autoescaped).

No CDN, no fonts or scripts from elsewhere: the style and the few lines of script
(the larger view opened by a click on a thumbnail, a ``<dialog>``) are inline; the
figures and thumbnails are files beside ``index.html`` (``figures/``, ``images/``),
referenced by relative links, so the folder opens offline from any place it is
copied to. :func:`render` takes the report's data dict (what ``report.json`` holds).
"""

from __future__ import annotations

import math
from typing import Any

import jinja2


def fmt(value: Any, digits: int = 3) -> str:
    """A number for the page: ``digits`` decimals, ``n/a`` for None/NaN, thousands separators for ints."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def fmt_p(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>memscore report: {{ d.model }} on {{ d.provenance.dest }}</title>
<style>
 body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222; background: #fafafa; }
 header { background: #2d3e50; color: #fff; padding: 14px 24px; }
 header h1 { margin: 0; font-size: 1.35em; }
 header p { margin: 4px 0 0; font-size: .9em; opacity: .85; }
 nav { padding: 6px 24px; background: #e9edf1; font-size: .9em; }
 nav a { margin-right: 14px; color: #2d3e50; }
 main { padding: 0 24px 40px; max-width: 1200px; }
 section { margin-top: 22px; }
 h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 4px; font-size: 1.15em; }
 h3 { font-size: 1em; margin-bottom: 6px; }
 table { border-collapse: collapse; font-size: .86em; margin: 6px 0 10px; background: #fff; max-width: 100%; }
 th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
 td.wrap { overflow-wrap: anywhere; min-width: 8em; }
 th, td.num, td.time { white-space: nowrap; }
 td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
 .figs { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
 figure { margin: 0; background: #fff; border: 1px solid #d0d7de; padding: 6px; }
 figure img.plot { max-width: 100%; height: auto; display: block; }
 figcaption { font-size: .8em; color: #555; margin-top: 4px; }
 .note { font-size: .85em; color: #555; }
 .warn { color: #8a4b00; }
 .gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
 .card { background: #fff; border: 1px solid #d0d7de; padding: 5px; font-size: .78em; }
 .card button { border: 0; padding: 0; background: none; cursor: zoom-in; display: block; width: 100%; }
 .card img { width: 100%; height: 140px; object-fit: contain; background: #eee; display: block; }
 .card .missing { height: 140px; display: flex; align-items: center; justify-content: center; background: #f3e1e1; color: #8a1f1f; font-weight: bold; }
 .card .path { word-break: break-all; color: #555; }
 .card .score { font-weight: bold; }
 dialog { max-width: 94vw; max-height: 94vh; border: 0; padding: 10px; }
 dialog::backdrop { background: rgba(0,0,0,.7); }
 dialog img { max-width: 90vw; max-height: 78vh; display: block; margin: 0 auto; }
 .card .maps { display: flex; gap: 3px; margin-top: 3px; }
 .card figure.map { flex: 1; min-width: 0; border: 0; padding: 0; }
 .card figure.map img { height: 70px; }
 .card figure.map figcaption { font-size: .9em; margin: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
 .card .nomap { height: 70px; display: flex; align-items: center; justify-content: center; background: #eee; color: #777; }
 dialog .maps { display: flex; flex-wrap: wrap; gap: 8px; justify-content: center; }
 dialog .maps img { max-height: 40vh; max-width: 44vw; }
 dialog p { font-size: .85em; word-break: break-all; }
</style>
</head>
<body>
<header>
 <h1>memscore report: {{ d.model }}</h1>
 <p>{{ d.provenance.dest }} &middot; generated {{ d.generated_at }} by memscore {{ d.memscore_version }}</p>
</header>
<nav>
 <a href="#provenance">Provenance</a><a href="#distribution">Distribution</a>
 {% if d.human %}<a href="#human">Model vs human</a>{% endif %}
 <a href="#gallery">Gallery</a><a href="#errors">Errors</a><a href="report.json">report.json</a>
</nav>
<main>
<section id="provenance">
 <h2>Run provenance</h2>
 <table>
  <tr><th>model</th><th>weights (SHA-256)</th><th class="num">rows</th><th class="num">images</th><th class="num">runs</th><th>first scored (UTC)</th><th>last scored (UTC)</th></tr>
  {% for s in d.provenance.scored %}
  <tr><td>{{ s.model }}</td><td><code title="{{ s.weights }}">{{ (s.weights or '')[:16] }}</code></td><td class="num">{{ fmt(s.rows) }}</td><td class="num">{{ fmt(s.images) }}</td><td class="num">{{ fmt(s.runs) }}</td><td class="time">{{ utc(s.first_scored_at) }}</td><td class="time">{{ utc(s.last_scored_at) }}</td></tr>
  {% endfor %}
 </table>
 <p>Failed: {% if d.provenance.failed %}{% for f in d.provenance.failed %}{{ f.model }} {{ f.stage }}/{{ f.reason }}: {{ fmt(f.images) }}{% if not loop.last %}; {% endif %}{% endfor %}{% else %}none{% endif %}.
  Parts: {{ d.provenance.score_parts }} scores, {{ d.provenance.error_parts }} errors.</p>
 {% if d.provenance.runs %}
 <h3>Runs (DEST/runs)</h3>
 <table>
  <tr><th>run</th><th>source</th><th>model</th><th>device</th><th class="num">scored</th><th class="num">skipped</th><th class="num">failed</th><th class="num">ignored</th><th class="num">images/s</th><th>started (UTC)</th><th>finished (UTC)</th></tr>
  {% for r in d.provenance.runs %}
  <tr><td>{{ r.run_id }}</td><td class="wrap">{{ r.source }}</td><td>{{ r.model }}</td><td>{{ r.device }}{% if r.backend and r.backend != 'torch' %} ({{ r.backend }}){% endif %}</td><td class="num">{{ fmt(r.scored) }}</td><td class="num">{{ fmt(r.skipped) }}</td><td class="num">{{ fmt(r.failed) }}</td><td class="num">{{ fmt(r.ignored_files) }}</td><td class="num">{{ fmt(r.images_per_second, 2) }}</td><td class="time">{{ utc(r.started_at) }}</td><td class="time">{{ utc(r.finished_at) }}</td></tr>
  {% endfor %}
 </table>
 {% endif %}
 {% if d.provenance.runs_note %}<p class="note">{{ d.provenance.runs_note }}</p>{% endif %}
 {% for w in d.provenance.warnings %}<p class="note warn">{{ w }}</p>{% endfor %}
</section>

<section id="distribution">
 <h2>Score distribution</h2>
 <table>
  <tr><th>{{ d.distribution.label }}</th><th class="num">n</th><th class="num">mean</th><th class="num">sd</th><th class="num">min</th><th class="num">Q1</th><th class="num">median</th><th class="num">Q3</th><th class="num">max</th></tr>
  {% for name, s in d.distribution.rows %}
  <tr><td>{{ name }}</td><td class="num">{{ fmt(s.n) }}</td><td class="num">{{ fmt(s.mean) }}</td><td class="num">{{ fmt(s.sd) }}</td><td class="num">{{ fmt(s.min) }}</td><td class="num">{{ fmt(s.q1) }}</td><td class="num">{{ fmt(s.median) }}</td><td class="num">{{ fmt(s.q3) }}</td><td class="num">{{ fmt(s.max) }}</td></tr>
  {% endfor %}
 </table>
 {% if d.distribution.pooled %}<p class="note">{{ d.distribution.n_groups }} groups; the smaller ones are pooled as "(other folders)".</p>{% endif %}
 {% if d.distribution.group_note %}<p class="note warn">{{ d.distribution.group_note }}</p>{% endif %}
 <div class="figs">
  {% for f in d.figures.distribution %}
  <figure><img class="plot" src="{{ f.png }}" alt="{{ f.title }}"><figcaption>{{ f.title }} &middot; <a href="{{ f.png }}">PNG</a> &middot; <a href="{{ f.svg }}">SVG</a></figcaption></figure>
  {% endfor %}
 </div>
</section>

{% if d.human %}{% set h = d.human %}
<section id="human">
 <h2>Model vs human memorability</h2>
 <p>Human data <code>{{ h.human }}</code> ({{ h.human_format }}, measure <b>{{ h.human_measure }}</b>); {{ fmt(h.get('n_matched', h.n)) }} images matched by {{ h.match }}{% if h.get('n_matched', h.n) != h.n %}, {{ fmt(h.n) }} analysed{% endif %}
  ({{ fmt(h.n_unmatched_scores) }} scored images without human data, {{ fmt(h.n_unmatched_human) }} human images without a score).
  Statistics from <code>memscore analyze</code>'s code (same inputs and options give the same numbers).</p>
 <table>
  <tr><th>statistic</th><th class="num">value</th><th class="num">{{ d.conf }}% CI (bootstrap, {{ h.bootstrap.resamples }} resamples)</th><th class="num">p</th><th>note</th></tr>
  <tr><td>Spearman ρ</td><td class="num" id="spearman-rho">{{ fmt(h.spearman.rho) }}</td><td class="num">{{ fmt(h.spearman.ci_low) }} .. {{ fmt(h.spearman.ci_high) }}</td><td class="num">{{ fmt_p(h.spearman.p_value) }}</td><td></td></tr>
  <tr><td>Pearson r</td><td class="num" id="pearson-r">{{ fmt(h.pearson.r) }}</td><td class="num">{{ fmt(h.pearson.ci_low) }} .. {{ fmt(h.pearson.ci_high) }}</td><td class="num">{{ fmt_p(h.pearson.p_value) }}</td><td></td></tr>
  {% if h.kendall %}<tr><td>Kendall τ-b</td><td class="num">{{ fmt(h.kendall.tau) }}</td><td></td><td class="num">{{ fmt_p(h.kendall.p_value) }}</td><td></td></tr>{% endif %}
  {% for c in d.ceilings %}<tr><td>{{ c.label }}</td><td class="num" id="ceiling-{{ loop.index }}">{{ fmt(c.value) }}</td><td class="num">{% if c.ci_low is not none %}{{ fmt(c.ci_low) }} .. {{ fmt(c.ci_high) }}{% endif %}</td><td></td><td>{{ c.note }}</td></tr>{% endfor %}
  {% if d.fraction %}<tr><td>{{ d.fraction.label }}</td><td class="num" id="fraction">{{ fmt(d.fraction.value) }}</td><td class="num">{% if d.fraction.ci_low is not none %}{{ fmt(d.fraction.ci_low) }} .. {{ fmt(d.fraction.ci_high) }}{% endif %}</td><td></td><td>{% if d.fraction.value > 1 %}above the human ceiling: check the ceiling (participants per image, splits) and that the model was not trained on these images{% endif %}</td></tr>{% endif %}
 </table>
 {% if not d.ceilings %}<p class="note">No human ceiling: it needs trial-level human data (per-participant responses) to split participants in halves.</p>{% endif %}
 {% if h.measure_table %}{% set mt = h.measure_table %}
 <h3>Every model against every human measure</h3>
 <table id="measure-table">
  <tr><th>measure</th><th>model</th><th class="num">n</th><th class="num">Spearman ρ</th><th class="num">{{ d.conf }}% CI</th><th class="num">Pearson r</th><th class="num">{{ d.conf }}% CI</th><th class="num">noise ceiling (Spearman)</th><th class="num">fraction of it</th></tr>
  {% for row in mt.rows %}{% for m in row.models %}
  <tr class="measure-row"><td>{{ row.measure }}</td><td>{{ m.model }}</td><td class="num">{{ fmt(row.n) }}</td>
   <td class="num">{{ fmt(m.spearman.rho) }}</td><td class="num">{{ fmt(m.spearman.ci_low) }} .. {{ fmt(m.spearman.ci_high) }}</td>
   <td class="num">{{ fmt(m.pearson.r) }}</td><td class="num">{{ fmt(m.pearson.ci_low) }} .. {{ fmt(m.pearson.ci_high) }}</td>
   <td class="num">{% if row.noise_ceiling %}{{ fmt(row.noise_ceiling.spearman.ceiling) }}{% else %}n/a{% endif %}</td>
   <td class="num">{% if m.fraction_of_noise_ceiling %}{{ fmt(m.fraction_of_noise_ceiling.spearman.value) }}{% endif %}</td></tr>
  {% endfor %}{% endfor %}
 </table>
 {% for row in mt.rows %}{% if row.ceiling_unavailable %}<p class="note">{{ row.measure }}: noise ceiling unavailable: {{ row.ceiling_unavailable }}</p>{% endif %}{% endfor %}
 {% for line in mt.assumptions %}<p class="note">{{ line }}</p>{% endfor %}
 {% endif %}
 {% if h.participants %}<p class="note">Participants: {{ h.participants.kept }} kept, {{ h.participants.excluded }} excluded.</p>{% endif %}
 {% if h.groups %}
 <h3>Per group</h3>
 <table><tr><th>group</th><th class="num">n</th><th class="num">Spearman ρ</th><th class="num">CI</th><th class="num">Pearson r</th></tr>
 {% for g in h.groups %}<tr><td>{{ g.group }}</td><td class="num">{{ fmt(g.n) }}</td>{% if g.spearman %}<td class="num">{{ fmt(g.spearman.rho) }}</td><td class="num">{{ fmt(g.spearman.ci_low) }} .. {{ fmt(g.spearman.ci_high) }}</td><td class="num">{{ fmt(g.pearson.r) }}</td>{% else %}<td colspan="3">too few images</td>{% endif %}</tr>{% endfor %}
 </table>
 {% endif %}
 {% for w in h.warnings or [] %}<p class="note warn">warning: {{ w }}</p>{% endfor %}
 <div class="figs">
  {% for f in d.figures.human %}
  <figure><img class="plot" src="{{ f.png }}" alt="{{ f.title }}"><figcaption>{{ f.title }} &middot; <a href="{{ f.png }}">PNG</a> &middot; <a href="{{ f.svg }}">SVG</a></figcaption></figure>
  {% endfor %}
 </div>
</section>
{% endif %}

<section id="gallery">
 <h2>Gallery</h2>
 <p class="note">Thumbnails read from the archive (at most {{ d.thumb_px }} px; click for a larger view, at most {{ d.view_px }} px). Rank 1 = the highest score of {{ fmt(d.distribution.overall.n) }}.
 {% if d.maps %}Under each thumbnail: a memorability map per model, drawn over the center crop that model scores (red: the regions that raise the score most; each map scaled to its own peak).{% endif %}</p>
 {% if d.maps %}
 <table id="maps">
  <tr><th>model</th><th>method</th><th>layer or window</th><th>input</th><th>weights (SHA-256)</th><th class="num">maps</th><th class="num">s per image</th><th class="num">load s</th></tr>
  {% for m in d.maps.models %}
  {% if m.status == 'ok' %}<tr><td>{{ m.model }}</td><td>{{ m.method }} (<code>{{ m.library }}</code>)</td><td>{{ m.where }}</td><td>{{ m.input }}</td><td><code title="{{ m.weights }}">{{ (m.weights or '')[:19] }}</code></td><td class="num">{{ fmt(m.images) }}</td><td class="num">{{ fmt(m.seconds_per_image, 2) }}</td><td class="num">{{ fmt(m.load_seconds, 1) }}</td></tr>
  {% else %}<tr><td>{{ m.model }}</td><td colspan="7" class="warn">no maps: {{ m.detail }}</td></tr>{% endif %}
  {% endfor %}
 </table>
 {% endif %}
 {% for block in d.gallery %}
 <h3>{{ block.title }}</h3>
 <div class="gallery">
  {% for g in block.rows %}
  <div class="card">
   {% if g.thumb.status == 'ok' %}
   <button type="button" class="open" data-view="{{ g.thumb.view }}" data-caption="{{ g.path }} · score {{ fmt(g.score) }}{% if g.human is not none %} · human {{ fmt(g.human) }}{% endif %}"><img class="thumb" src="{{ g.thumb.thumb }}" alt="{{ g.path }}" loading="lazy"></button>
   {% else %}
   <div class="missing" title="{{ g.thumb.detail }}">{{ g.thumb.status }}</div>
   {% endif %}
   {% if g.maps %}<div class="maps">{% for name, m in g.maps.items() %}
    {% if m.map %}<figure class="map"><img class="map" src="{{ m.map }}" alt="{{ name }} map of {{ g.path }}" loading="lazy" title="{{ name }}: {{ m.method }}, {{ m.where }}; peak {{ fmt(m.peak, 4) }}; score of this crop {{ fmt(m.score) }}"><figcaption>{{ name }} · {{ m.method }}, {{ m.where }}{% if m.peak is not none and m.peak <= 0 %} · flat: no region raises the score{% endif %}</figcaption></figure>
    {% else %}<figure class="map"><div class="nomap" title="{{ m.detail }}">{{ m.status }}</div><figcaption>{{ name }}</figcaption></figure>{% endif %}
   {% endfor %}</div>{% endif %}
   <div><span class="score">{{ fmt(g.score) }}</span> · rank {{ fmt(g.rank) }}{% if g.human is not none %}<br>human {{ fmt(g.human) }} · rank {{ fmt(g.human_rank) }} of {{ fmt(d.human.n) }}{% elif d.human %}<br>no human data{% endif %}</div>
   <div class="path">{{ g.path }}</div>
  </div>
  {% endfor %}
 </div>
 {% endfor %}
</section>

<section id="errors">
 <h2>Errors</h2>
 {% if d.errors.counts %}
 <table><tr><th>model</th><th>stage</th><th>reason</th><th class="num">images</th></tr>
 {% for f in d.errors.counts %}<tr><td>{{ f.model }}</td><td>{{ f.stage }}</td><td>{{ f.reason }}</td><td class="num">{{ fmt(f.images) }}</td></tr>{% endfor %}
 </table>
 <h3>Examples (up to {{ d.errors.per_reason }} per reason, {{ d.model }})</h3>
 <table><tr><th>path</th><th>stage</th><th>reason</th><th>message</th></tr>
 {% for e in d.errors.examples %}<tr><td class="wrap">{{ e.path }}</td><td>{{ e.stage }}</td><td>{{ e.error }}</td><td class="wrap">{{ e.message }}</td></tr>{% endfor %}
 </table>
 {% else %}<p>No image failed.</p>{% endif %}
</section>
{% if d.warnings %}<section id="warnings"><h2>Warnings</h2>{% for w in d.warnings %}<p class="note warn">{{ w }}</p>{% endfor %}</section>{% endif %}
</main>
<dialog id="viewer"><img id="viewer-img" alt=""><div class="maps" id="viewer-maps"></div><p id="viewer-caption"></p><form method="dialog"><button>close</button></form></dialog>
<script>
(function () {
  var dialog = document.getElementById("viewer");
  var img = document.getElementById("viewer-img");
  var maps = document.getElementById("viewer-maps");
  var caption = document.getElementById("viewer-caption");
  document.querySelectorAll("button.open").forEach(function (button) {
    button.addEventListener("click", function () {
      img.src = button.dataset.view;
      img.alt = button.dataset.caption;
      caption.textContent = button.dataset.caption;
      maps.replaceChildren();
      button.closest(".card").querySelectorAll("figure.map").forEach(function (f) { if (f.querySelector("img")) { maps.appendChild(f.cloneNode(true)); } });
      dialog.showModal();
    });
  });
  dialog.addEventListener("click", function (event) { if (event.target === dialog) { dialog.close(); } });
})();
</script>
</body>
</html>
"""


def utc(value: Any) -> str:
    """An ISO time in UTC as ``YYYY-MM-DD HH:MM:SS`` (the headers say UTC); '' for None."""
    if not value:
        return ""
    return str(value).replace("T", " ").removesuffix("+00:00").removesuffix("Z")


def render(data: dict[str, Any]) -> str:
    """The page for the report ``data`` (see :func:`flows.report.build_report`)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(fmt=fmt, fmt_p=fmt_p, utc=utc)
    return env.from_string(TEMPLATE).render(d=data)
