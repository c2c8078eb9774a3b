"""Jinja2 template of the run report page.

Kept as a Python string because a Flower app bundle (FAB) carries only Python,
TOML, Markdown, YAML and JSON files, so a separate template file would be missing
when the ServerApp runs under `flwr run`.
"""

REPORT_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>linguachain run {{ run.run_id }}</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1b1b1b; }
  h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
  h2 { border-bottom: 1px solid #ccc; margin-top: 2rem; padding-bottom: 0.2rem; }
  table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
  th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
  th { background: #f3f3f3; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  code, .hash { font-family: ui-monospace, monospace; font-size: 0.85rem; }
  .missing { color: #777; font-style: italic; }
  .valid { color: #176b1f; font-weight: bold; }
  .invalid { color: #a11; font-weight: bold; }
  .plots { display: flex; flex-wrap: wrap; gap: 1rem; }
  .plots img { max-width: 100%; border: 1px solid #eee; }
  .config { columns: 2 24rem; }
  .config table { break-inside: avoid; }
  blockquote { border-left: 3px solid #ccc; margin: 0.5rem 0; padding-left: 0.8rem; }
</style>
</head>
<body>
<h1>linguachain run {{ run.run_id }}</h1>
<p>Folder <code>{{ run.folder }}</code>. Text: {{ run.summary.get("data_source", "not recorded") }}.</p>

<h2 id="summary">Summary</h2>
{% if run.summary %}
<table>
  {% for label, value in summary_rows %}
  <tr><th>{{ label }}</th><td class="num">{{ value }}</td></tr>
  {% endfor %}
</table>
{% else %}
<p class="missing">No summary.json: the run did not finish.</p>
{% endif %}

<h2 id="config">Configuration</h2>
<div class="config">
{% for group, values in run.config.items() %}
<table>
  <tr><th colspan="2">{{ group }}</th></tr>
  {% for key, value in values.items() %}
  <tr><td><code>{{ group }}.{{ key }}</code></td><td>{{ value }}</td></tr>
  {% endfor %}
</table>
{% endfor %}
</div>

<h2 id="perplexity">Perplexity and loss</h2>
<div class="plots">
  <img alt="held-out perplexity per round" src="data:image/png;base64,{{ plots.perplexity }}">
  <img alt="loss per round" src="data:image/png;base64,{{ plots.loss }}">
</div>
<table>
  <tr><th>round</th><th>held-out perplexity</th><th>held-out loss</th><th>bits/byte</th>
      <th>training loss</th><th>nodes</th><th>tokens</th><th>committed</th><th>model hash</th></tr>
  {% for row in run.metrics %}
  <tr>
    <td class="num">{{ row.round }}</td>
    <td class="num">{{ fmt(row.test_perplexity) }}</td>
    <td class="num">{{ fmt(row.test_loss) }}</td>
    <td class="num">{{ fmt(row.test_bits_per_byte) }}</td>
    <td class="num">{{ fmt(row.train_loss) }}</td>
    <td class="num">{{ row.nodes }}</td>
    <td class="num">{{ row.tokens }}</td>
    <td>{{ "yes" if row.committed else "no" }}</td>
    <td class="hash" title="{{ row.model_hash }}">{{ (row.model_hash or "")[:16] }}</td>
  </tr>
  {% endfor %}
</table>

<h2 id="phases">Time per phase</h2>
<div class="plots"><img alt="seconds per phase and round" src="data:image/png;base64,{{ plots.phases }}"></div>
<table>
  <tr><th>round</th>{% for phase in phases %}<th>{{ phase }} (s)</th>{% endfor %}</tr>
  {% for round, seconds in phase_rows %}
  <tr><td class="num">{{ round }}</td>
    {% for phase in phases %}<td class="num">{{ fmt(seconds.get(phase)) }}</td>{% endfor %}</tr>
  {% endfor %}
</table>

{% for section in node_sections %}
<h2 id="{{ section.anchor }}">{{ section.title }}</h2>
{% if section.series %}
<p>{{ section.description }}</p>
<div class="plots"><img alt="{{ section.title }} per round" src="data:image/png;base64,{{ section.plot }}"></div>
<table>
  <tr><th>round</th>{% for node in section.nodes %}<th>{{ node }}</th>{% endfor %}</tr>
  {% for round, values in section.series.items() %}
  <tr><td class="num">{{ round }}</td>
    {% for node in section.nodes %}<td class="num">{{ fmt(values.get(node)) }}</td>{% endfor %}</tr>
  {% endfor %}
</table>
{% else %}
{% if section.final %}
<p class="missing">{{ section.title }} per round: not recorded in this run. The ledger's final balances:</p>
{% else %}
<p class="missing">{{ section.title }}: not recorded in this run.{% if section.fallback %} {{ section.fallback }}{% endif %}</p>
{% endif %}
{% endif %}
{% if section.final %}
<table>
  <tr><th>account</th><th>final balance (LinguaCoin)</th></tr>
  {% for account, balance in section.final.items() %}
  <tr><td class="hash">{{ account }}</td><td class="num">{{ fmt(balance) }}</td></tr>
  {% endfor %}
</table>
{% endif %}
{% endfor %}

<h2 id="ledger">Ledger</h2>
{% if run.ledger_error %}
<p class="invalid">The ledger could not be read: {{ run.ledger_error }}</p>
{% endif %}
{% if run.verify %}
<p>Verification: <span class="{{ 'valid' if run.verify.valid else 'invalid' }}">{{ run.verify }}</span></p>
{% endif %}
{% if run.blocks %}
<table>
  <tr><th>height</th><th>kind</th><th>hash</th><th>parent</th><th>proposer</th>
      <th>time (UTC)</th><th>contents</th><th>attestations and consensus evidence</th></tr>
  {% for block in run.blocks %}
  <tr>
    <td class="num">{{ block.height }}</td>
    <td>{{ block.kind }}</td>
    <td class="hash" title="{{ block.hash }}">{{ block.hash[:16] }}</td>
    <td class="hash" title="{{ block.parent_hash }}">{{ block.parent_hash[:16] }}</td>
    <td class="hash">{{ block.proposer or "none (no consensus in this run)" }}</td>
    <td>{{ utc(block.timestamp) }}</td>
    <td>{{ describe(block) }}</td>
    <td>{% if block.evidence %}{% for name, value in block.evidence.items() %}<code>{{ name }}</code>: <span class="hash" title="{{ value }}">{{ value[:24] }}{% if value|length > 24 %}…{% endif %}</span><br>{% endfor %}{% else %}<span class="missing">none</span>{% endif %}</td>
  </tr>
  {% endfor %}
</table>
{% endif %}

<h2 id="generations">Sample generations</h2>
{% if run.generations %}
{% for sample in run.generations %}
<p><strong>{{ "greedy" if sample.top_k == 0 else "top-" ~ sample.top_k ~ " sampling" }}</strong>, prompt <q>{{ sample.prompt }}</q>:</p>
<blockquote>{{ sample.text }}</blockquote>
{% endfor %}
{% else %}
<p class="missing">Sample generations: not recorded in this run.</p>
{% endif %}

<p class="missing">Written by linguachain at {{ written_at }} UTC; rebuild with <code>linguachain report --run {{ run.folder }}</code>.</p>
</body>
</html>
"""
