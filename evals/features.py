"""Feature pages: what each of a set of informative features responds to, on held-out text.

Written into the run as `features/index.html` (the list, searchable by feature id and by token) and
one page per feature made by SAEDashboard (sae-dashboard 0.8.0, the field's feature visualizer, run
offline with the already loaded model and SAE): its top-activating held-out contexts with tokens
coloured by activation, samples from lower activation intervals, the activation density histogram, and
the output tokens its decoder direction promotes and suppresses through the unembedding. Added here,
because SAEDashboard does not do them: the choice of features (the most frequent, a seeded random
sample of those that fire, the variant's own groups, the most consistent over time), each feature's
nearest features by decoder cosine among all d_sae, and its firing rate per topic of the held-out
documents. Two things are fixed after SAEDashboard writes its pages: its logit-histogram ticks (at
logits spanning less than 0.3, as on Gemma 3, it writes one tick per 1e-6: 1.3 MB a feature) and its
two CDN scripts (d3 6.7.0, plotly), replaced by local copies in `features/assets/` so that the pages open
from disk with no network.
"""

from __future__ import annotations

import copy
import html
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from evals.context import EvalContext
from trainers.model import REPO_ROOT, token_activations

FOLDER = "features"
D3 = REPO_ROOT / ".cache" / "assets" / "d3.v6.min.js"  # fetched by setup.sh from the npm registry (pinned)
CDN = {"https://d3js.org/d3.v6.min.js": "d3.v6.min.js", "https://cdn.plot.ly/plotly-latest.min.js": "plotly.min.js"}


@dataclass
class Settings:
    sequences: int = 64  # held-out sequences the pages are built from
    frequent: int = 8  # the most frequently firing features
    random: int = 8  # a seeded random sample of the features that fire
    per_group: int = 4  # from each of the variant's own groups, and the most consistent over time
    neighbours: int = 5  # nearest features by decoder cosine
    seed: int = 0


def assets() -> dict[str, Path]:
    """The local copies of SAEDashboard's two scripts: d3 6.7.0 (setup.sh), plotly.js from the pinned
    plotly package."""
    import plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    missing = [p for p in (D3, plotly_js) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing: run the README's setup command")
    return {"d3.v6.min.js": D3, "plotly.min.js": plotly_js}


@torch.no_grad()
def feature_statistics(sae, acts: torch.Tensor, doc_index: torch.Tensor, topics: list[str], batch: int = 4096):
    """Per feature, over held-out tokens `acts` [n_seq, T, d] (doc_index [n_seq, T]): firing rate, max
    activation, firing rate per topic, and the lag-1 correlation of its activation with itself at the
    next token of the same document (how consistent it is over time)."""
    n_seq, T, d = acts.shape
    flat = acts.reshape(-1, d)
    doc = doc_index.reshape(-1).long()
    topic_names = sorted({t for t in topics if t})
    topic_of = torch.tensor([topic_names.index(t) if t else -1 for t in topics] + [-1], dtype=torch.long)
    topic = topic_of[doc]  # -1 for BOS (doc -1 maps to the appended -1) and unlabelled documents
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae)
    max_act = torch.zeros(d_sae)
    per_topic = torch.zeros(len(topic_names), d_sae)
    tokens_per_topic = torch.bincount(topic[topic >= 0], minlength=len(topic_names)).float()
    f_all = []
    for start in range(0, len(flat), batch):
        f = sae.encode(flat[start:start + batch].to(sae.device, sae.dtype)).float().cpu()
        f_all.append(f)
        on = (f > 0).float()
        fired += on.sum(0)
        max_act = torch.maximum(max_act, f.max(0).values)
        t = topic[start:start + batch]
        if len(topic_names):
            per_topic.index_add_(0, t[t >= 0], on[t >= 0])
    f = torch.cat(f_all).reshape(n_seq, T, d_sae)
    same_doc = (doc_index[:, 1:] == doc_index[:, :-1]) & (doc_index[:, 1:] >= 0)
    a, b = f[:, :-1][same_doc], f[:, 1:][same_doc]  # [pairs, d_sae]
    a, b = a - a.mean(0), b - b.mean(0)
    lag1 = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-12)
    return {"firing_rate": fired / len(flat), "max_act": max_act, "lag1": lag1, "fired": fired, "f": f,
            "topics": topic_names, "per_topic": per_topic / tokens_per_topic.clamp_min(1)[:, None]}


def choose(stats: dict, groups: dict[str, list[int]], s: Settings) -> dict[int, list[str]]:
    """feature id -> the reasons it was chosen, in the order the index lists them."""
    chosen: dict[int, list[str]] = {}
    alive = stats["fired"] > 0
    for f in stats["firing_rate"].argsort(descending=True)[:s.frequent].tolist():
        chosen.setdefault(f, []).append("most frequent")
    pool = sorted(set(alive.nonzero().flatten().tolist()) - set(chosen))
    for f in random.Random(s.seed).sample(pool, min(s.random, len(pool))):
        chosen.setdefault(f, []).append("random sample")
    enough = stats["fired"] >= 5  # a correlation over fewer firings means little
    lag1 = torch.where(enough, stats["lag1"], torch.full_like(stats["lag1"], -2))
    for f in lag1.argsort(descending=True)[:s.per_group].tolist():
        if enough[f]:
            chosen.setdefault(f, []).append("most consistent over time")
    for name, members in groups.items():
        for f in [m for m in members if alive[m]][:s.per_group]:
            chosen.setdefault(f, []).append(name)
    return chosen


@torch.no_grad()
def decoder_facts(sae, model, features: list[int], k_tokens: int, k_neighbours: int) -> dict[int, dict]:
    """Per feature: the tokens its decoder direction promotes and suppresses most through the
    unembedding (W_dec W_U, as SAEDashboard computes them) and its nearest features by decoder cosine."""
    w_dec = sae.W_dec.detach().float().cpu()
    unit = w_dec / w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    logits = w_dec[features] @ model.W_U.detach().float().cpu()  # [n, d_vocab]
    cos = unit[features] @ unit.T
    cos[torch.arange(len(features)), torch.tensor(features)] = -2  # not itself
    out = {}
    tok = model.tokenizer
    for i, f in enumerate(features):
        up, down = logits[i].topk(k_tokens), (-logits[i]).topk(k_tokens)
        near = cos[i].topk(k_neighbours)
        out[f] = {"promotes": [tok.decode([t]) for t in up.indices.tolist()],
                  "suppresses": [tok.decode([t]) for t in down.indices.tolist()],
                  "nearest": [(int(j), float(c)) for j, c in zip(near.indices, near.values)]}
    return out


@torch.no_grad()
def top_tokens(feature_acts: torch.Tensor, tokens: torch.Tensor, features: list[int], tokenizer, k: int = 5) -> dict:
    """Per feature: the distinct tokens at its highest activations on the held-out text
    (feature_acts [n_seq, T, d_sae], as feature_statistics returns them)."""
    f, ids = feature_acts.reshape(-1, feature_acts.shape[-1])[:, features], tokens.reshape(-1)
    out = {}
    for i, feature in enumerate(features):
        seen: list[str] = []
        for pos in f[:, i].argsort(descending=True)[:200].tolist():
            if f[pos, i] <= 0 or len(seen) == k:
                break
            word = tokenizer.decode([int(ids[pos])])
            if word not in seen:
                seen.append(word)
        out[feature] = seen
    return out


def dashboard(sae, model, tokens: torch.Tensor, features: list[int], folder: Path) -> dict[int, str]:
    """SAEDashboard's feature-centric page of each feature, made offline: file name per feature."""
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    config = SaeVisConfig(hook_point=sae.cfg.metadata.hook_name, features=features,
                          minibatch_size_features=len(features), minibatch_size_tokens=32, device=str(sae.device),
                          dtype="float32", ignore_positions=[0], verbose=False)  # position 0: BOS, never trained on
    data = SaeVisRunner(config).run(encoder=copy.deepcopy(sae), model=model, tokens=tokens)  # it folds norms in place
    for fd in data.feature_data_dict.values():  # its tick bug: one tick per 1e-6 of a narrow logit range
        h = fd.logits_histogram_data
        if h is not None and len(h.tick_vals) > 20 and len(h.bar_values):
            lo, hi = min(h.bar_values), max(h.bar_values)
            h.tick_vals = [round(lo + (hi - lo) * i / 4, 4) for i in range(5)]
    save_feature_centric_vis(sae_vis_data=data, filename=folder / "feature.html", separate_files=True)
    pages = {}
    for f in features:
        page = folder / f"feature_feature_{f}.html"
        text = page.read_text()
        for url, name in CDN.items():
            text = text.replace(f'<script src="{url}"></script>', f'<script src="assets/{name}"></script>')
        target = folder / f"feature_{f}.html"
        target.write_text(text)
        page.unlink()
        pages[f] = target.name
    return pages


def run(ctx: EvalContext, settings: Settings) -> dict:
    """Writes features/index.html and one page per chosen feature; returns a summary."""
    sae, model = ctx.sae, ctx.model
    folder = ctx.out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "assets").mkdir(exist_ok=True)
    for name, path in assets().items():
        shutil.copyfile(path, folder / "assets" / name)
    tokens = ctx.held_out(settings.sequences)
    doc_index, documents = ctx.held_out_documents(len(tokens))
    acts = token_activations(model, sae.cfg.metadata.hook_name, tokens, ctx.model_batch_size)
    stats = feature_statistics(sae, acts, doc_index[:, 1:], [d.topic for d in documents])
    groups = sae.feature_groups() if hasattr(sae, "feature_groups") else {}
    chosen = choose(stats, groups, settings)
    features = list(chosen)
    facts = decoder_facts(sae, model, features, 10, settings.neighbours)
    fires_on = top_tokens(stats["f"], tokens[:, 1:], features, model.tokenizer)
    pages = dashboard(sae, model, tokens, features, folder)
    rows = [{"feature": f, "chosen_as": chosen[f], "firing_rate": float(stats["firing_rate"][f]),
             "max_activation": float(stats["max_act"][f]), "lag1_autocorrelation": float(stats["lag1"][f]),
             "per_topic_firing_rate": {t: float(stats["per_topic"][i, f]) for i, t in enumerate(stats["topics"])},
             "fires_most_on": fires_on[f], **facts[f], "page": f"{FOLDER}/{pages[f]}"} for f in features]
    write_index(folder / "index.html", rows, sae, tokens)
    (folder / "features.json").write_text(json.dumps(rows, indent=1))
    reasons = sorted({r for rs in chosen.values() for r in rs})
    return {"features": len(features), "index": f"{FOLDER}/index.html", "chosen_as": {
        r: sum(r in rs for rs in chosen.values()) for r in reasons}, "held_out_tokens": int((tokens[:, 1:]).numel()),
        "alive_on_held_out": float((stats["fired"] > 0).float().mean()), "tool": "sae-dashboard 0.8.0",
        # the variant's own groups and their sizes: an empty one (e.g. orthogonal's before its features have
        # specialised by domain) is listed here, so that its absence from the pages is explained
        "variant_groups": {name: len(members) for name, members in groups.items()}}


def headline(r: dict) -> str:
    return (f"{r['features']} feature pages in {r['index']} (" + ", ".join(f"{n} {k}" for k, n in r["chosen_as"].items())
            + f"); {r['alive_on_held_out']:.0%} of features fire on {r['held_out_tokens']:,} held-out tokens"
            + "".join(f"; {name}: {n} features" for name, n in r.get("variant_groups", {}).items() if not n))


def data_plan(target, settings: Settings) -> dict:
    return {"source": "held-out documents of the training text", "datasets": [target.dataset],
            "sequences": settings.sequences, "context_length": target.context_size}


def _bars(rates: dict[str, float]) -> str:
    if not rates:
        return "<span class=dim>no topic labels</span>"
    top = max(rates.values()) or 1
    return "".join(f"<div class=bar title='{html.escape(t)}: {v:.3%}'><span>{html.escape(t)}</span>"
                   f"<i style='width:{100 * v / top:.0f}%'></i></div>" for t, v in sorted(rates.items()))


def write_index(path: Path, rows: list[dict], sae, tokens) -> None:
    """The list of chosen features: what each was chosen as, how often it fires, the tokens it promotes,
    its nearest features and its firing per topic; a search box filters by feature id or token."""
    listed = {r["feature"] for r in rows}
    body = []
    for r in rows:
        near = ", ".join((f"<a href='{'feature_%d.html' % j}'>{j}</a>" if j in listed else str(j)) + f" ({c:.2f})"
                         for j, c in r["nearest"])
        words = " ".join(r["fires_most_on"] + r["promotes"] + r["suppresses"])
        body.append(
            f"<tr data-id='{r['feature']}' data-tokens='{html.escape(words.lower(), quote=True)}'>"
            f"<td><a href='{html.escape(Path(r['page']).name)}'>{r['feature']}</a></td>"
            f"<td>{html.escape(', '.join(r['chosen_as']))}</td><td>{r['firing_rate']:.3%}</td>"
            f"<td>{r['max_activation']:.3g}</td><td>{r['lag1_autocorrelation']:.2f}</td>"
            f"<td class=tok>{' '.join('<code>' + html.escape(t) + '</code>' for t in r['fires_most_on'])}</td>"
            f"<td class=tok>{' '.join('<code>' + html.escape(t) + '</code>' for t in r['promotes'][:5])}</td>"
            f"<td class=tok>{' '.join('<code>' + html.escape(t) + '</code>' for t in r['suppresses'][:5])}</td>"
            f"<td>{near}</td><td class=topics>{_bars(r['per_topic_firing_rate'])}</td></tr>")
    meta = sae.cfg.metadata
    run = path.parent.parent.name.removesuffix(".partial").removesuffix(".adding")  # the run's name, not its stage's
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Features: {html.escape(run)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}} th{{background:#f4f4f4;position:sticky;top:0}}
code{{background:#eef;padding:0 3px;margin:1px;border-radius:3px;white-space:pre}} .dim{{color:#888}}
.bar{{position:relative;width:160px;height:14px;font-size:10px;margin:1px 0}} .bar i{{position:absolute;left:0;top:0;height:100%;background:#9cf;z-index:-1}}
.bar span{{padding-left:2px}} input{{font-size:14px;padding:4px;width:22em}}
</style></head><body>
<h2>Feature pages: {html.escape(run)}</h2>
<p>{html.escape(str(meta.model_name))}, {html.escape(str(meta.hook_name))}, d_sae {sae.cfg.d_sae}; measured on
{len(tokens)} held-out sequences ({int(tokens[:, 1:].numel()):,} tokens, BOS excluded), never training text.
Each feature's page (SAEDashboard) shows its top-activating contexts, samples from lower activation intervals,
its activation density and the tokens it promotes and suppresses.</p>
<p><input id=q placeholder="search: feature id or token" oninput="filter()"> <span id=n></span></p>
<table id=t><tr><th>feature</th><th>chosen as</th><th>firing rate</th><th>max act</th><th>lag-1 autocorr.</th>
<th>fires most on</th><th>promotes</th><th>suppresses</th><th>nearest by decoder cosine</th><th>firing rate per topic (relative)</th></tr>
{chr(10).join(body)}
</table>
<script>
function filter(){{
  const q = document.getElementById('q').value.trim().toLowerCase(); let shown = 0;
  for (const tr of document.querySelectorAll('#t tr[data-id]')) {{
    const hit = !q || tr.dataset.id === q || tr.dataset.tokens.includes(q);
    tr.style.display = hit ? '' : 'none'; shown += hit;
  }}
  document.getElementById('n').textContent = shown + ' of {len(rows)} features';
}}
filter();
</script></body></html>"""
    path.write_text(page)
