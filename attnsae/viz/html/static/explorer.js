// The circuit explorer's page: calls the JSON API (attnsae.explorer) and builds the attribution tree.
// Every text from a prompt or a tokenizer goes in through textContent, never as HTML.
"use strict";
const INFO = JSON.parse(document.getElementById("info").textContent);
let PROMPT = "";
let TOKENS = [];

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (k === "onclick") e.addEventListener("click", v); else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function fmt(x) { return (x >= 0 ? "+" : "") + Number(x).toPrecision(3); }
function val(x) { return el("span", {class: "val " + (x >= 0 ? "pos" : "neg"), text: fmt(x)}); }
function tok(i) { return JSON.stringify(TOKENS[i]); }

async function api(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) {
    const d = data.detail;
    throw new Error(Array.isArray(d) ? d.map((x) => `${(x.loc || []).slice(1).join(".")}: ${x.msg}`).join("; ") : d);
  }
  return data;
}

function showError(e) {
  const p = document.getElementById("error");
  p.textContent = e ? String(e.message || e) : "";
  p.hidden = !e;
}

async function run(ev) {
  ev.preventDefault();
  showError(null);
  const prompt = document.getElementById("prompt").value;
  try {
    const data = await api("/api/prompt", {prompt, k: Number(document.getElementById("k").value)});
    PROMPT = prompt;
    TOKENS = data.tokens;
    const box = document.getElementById("tokens");
    box.replaceChildren();
    document.getElementById("features").replaceChildren();
    document.getElementById("tree").replaceChildren();
    data.tokens.forEach((t, i) => {
      box.append(el("span", {class: "tok", "data-pos": i, title: `position ${i}`, text: t,
                             onclick: () => showFeatures(data, i)}));
    });
    showFeatures(data, data.tokens.length - 1);
  } catch (e) { showError(e); }
}

function showFeatures(data, pos) {
  document.querySelectorAll(".tok").forEach((t) => t.classList.toggle("sel", Number(t.dataset.pos) === pos));
  const box = document.getElementById("features");
  box.replaceChildren(el("h2", {text: `Top features at ${pos} ${tok(pos)}`}));
  for (const layer of INFO.layers) {
    const row = el("div", {class: "layer-row"}, el("b", {text: `L${layer}`}));
    const feats = data.top[layer][pos];
    if (!feats.length) row.append(el("span", {class: "note", text: "none active"}));
    for (const [f, a] of feats) {
      row.append(el("button", {class: "feat", "data-layer": layer, "data-feature": f, text: `F${f} ${Number(a).toPrecision(3)}`,
                               onclick: () => addNode(document.getElementById("tree"), layer, f, pos, null)}));
    }
    box.append(row);
  }
}

async function addNode(parent, layer, feature, dest, value) {
  showError(null);
  try {
    const d = await api("/api/feature", {prompt: PROMPT, layer, feature, dest, n_sources: 5});
    const summary = el("summary", {}, `L${layer}.F${feature} at ${dest} ${tok(dest)}: pre `, val(d.pre),
                       ` (act ${Number(d.act).toPrecision(3)}, bias ${fmt(d.bias)})`);
    if (value !== null) summary.append(" — ", val(value), " of its parent");
    const node = el("details", {class: "node", open: ""}, summary);
    if (d.dashboard) node.append(el("a", {href: d.dashboard, target: "_blank", text: "dashboard"}), " ");
    node.append(el("button", {class: "small", text: "ablate: effect on next-token loss",
                              onclick: (ev) => ablate(ev.target, layer, feature)}));
    const heads = el("table", {class: "parts"});
    d.by_head.forEach((v, h) => heads.append(el("tr", {}, el("td", {text: `head ${h}`}), el("td", {}, val(v)), el("td", {}, bar(v, d.by_head)))));
    node.append(el("div", {}, el("b", {text: "by head"}), heads));
    const srcs = el("div", {}, el("b", {text: `strongest sources (of ${d.n_sources})`}));
    for (const s of d.sources) {
      const row = el("div", {class: "src"}, `← ${s.src} ${tok(s.src)}: `, val(s.value), " ");
      const out = el("div");
      // the head that carries most of this source's term is picked first
      const top = s.by_head.reduce((b, v, h) => (Math.abs(v) > Math.abs(s.by_head[b]) ? h : b), 0);
      const head = el("select", {class: "head", "aria-label": "head for the QK table"});
      s.by_head.forEach((v, h) => head.append(el("option", {value: h, text: `head ${h}`})));
      head.value = top;
      row.append(el("button", {class: "small expand", text: "expand", onclick: (ev) => {
        ev.target.disabled = true;
        expand(out, layer, feature, dest, s.src);
      }}), " ", head, el("button", {class: "small qk", text: "QK pairs", onclick: () => qk(out, layer, Number(head.value), dest, s.src)}), out);
      srcs.append(row);
    }
    node.append(srcs);
    parent.append(node);
  } catch (e) { showError(e); }
}

function bar(v, all) {
  const m = Math.max(...all.map(Math.abs), 1e-12);
  return el("span", {class: "bar" + (v < 0 ? " neg" : ""), style: `width:${(80 * Math.abs(v) / m).toFixed(1)}px`});
}

async function expand(box, layer, feature, dest, src) {
  showError(null);
  try {
    const p = await api("/api/source", {prompt: PROMPT, layer, feature, dest, src, top: 6});
    const comps = el("table", {class: "parts"});
    const entries = Object.entries(p.components).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
    entries.push(["value bias (b_V, LN bias)", p.value_bias]);
    const rest = el("table", {class: "parts"});
    entries.forEach(([name, v], i) => {
      (i < 6 ? comps : rest).append(el("tr", {}, el("td", {text: name + (name.startsWith("mlp_out") ? " (not split: MLP)" : "")}),
                                        el("td", {}, val(v))));
    });
    box.append(el("div", {text: `source ${src} ${tok(src)}: ${fmt(p.total)} = the residual stream's parts`}), comps);
    if (entries.length > 6) box.append(el("details", {}, el("summary", {text: `${entries.length - 6} smaller parts`}), rest));
    for (const [l, u] of Object.entries(p.upstream)) {
      const t = el("table", {class: "parts"});
      for (const [j, act, v] of u.features) {
        t.append(el("tr", {}, el("td", {text: `L${l}.F${j} (act ${Number(act).toPrecision(3)})`}), el("td", {}, val(v)),
                    el("td", {}, el("button", {class: "small trace", text: "trace", onclick: () => addNode(box, Number(l), j, src, v)}))));
      }
      t.append(el("tr", {}, el("td", {text: "SAE error term"}), el("td", {}, val(u.error))));
      t.append(el("tr", {}, el("td", {text: "SAE bias (b_dec, b_O)"}), el("td", {}, val(u.bias))));
      box.append(el("details", {}, el("summary", {}, `attn_out.${l} `, val(u.total), ` into L${l} features (${u.n_active} active)`), t));
    }
    if (p.resid) {
      const t = el("table", {class: "parts"});
      for (const [j, act, v] of p.resid.features) {
        t.append(el("tr", {}, el("td", {text: `resid F${j} (act ${Number(act).toPrecision(3)})`}), el("td", {}, val(v))));
      }
      t.append(el("tr", {}, el("td", {text: "error term"}), el("td", {}, val(p.resid.error))));
      t.append(el("tr", {}, el("td", {text: "bias (b_dec) + value bias"}), el("td", {}, val(p.resid.bias + p.value_bias))));
      box.append(el("details", {}, el("summary", {}, `the residual stream into resid-SAE features `, val(p.resid.total)), t));
    }
  } catch (e) { showError(e); }
}

async function qk(box, layer, head, dest, src) {
  showError(null);
  try {
    const r = await api("/api/qk", {prompt: PROMPT, layer, head, dest, src, top: 10, resid: INFO.resid_layers.includes(layer)});
    const t = el("table", {class: "parts qk-table"}, el("tr", {}, el("th", {text: `query part at ${dest}`}),
                 el("th", {text: `key part at ${src}`}), el("th", {text: "term"})));
    for (const p of r.pairs) t.append(el("tr", {}, el("td", {text: p.query}), el("td", {text: p.key}), el("td", {}, val(p.value))));
    const sides = (title, parts) => el("details", {}, el("summary", {text: title}),
      el("table", {class: "parts"}, ...parts.map(([n, v]) => el("tr", {}, el("td", {text: n}), el("td", {}, val(v))))));
    box.append(el("div", {class: "qk"},
      el("b", {text: `L${layer} head ${head}: score ${tok(dest)} → ${tok(src)} `}), val(r.score),
      el("span", {class: "note", text: ` = the sum of ${r.n_terms} query × key terms; the ${r.pairs.length} largest ` +
                                         `carry ${(100 * r.top_abs_share).toFixed(0)}% of their total size`}),
      t, sides("query side, summed over keys", r.query_parts), sides("key side, summed over queries", r.key_parts)));
  } catch (e) { showError(e); }
}

async function ablate(button, layer, feature) {
  showError(null);
  try {
    const r = await api("/api/ablate", {prompt: PROMPT, layer, feature});
    const order = r.delta_loss.map((d, i) => [d, i]).sort((a, b) => Math.abs(b[0]) - Math.abs(a[0])).slice(0, 5);
    const t = el("table", {class: "parts"});
    for (const [d, i] of order) {
      t.append(el("tr", {}, el("td", {text: `predicting ${JSON.stringify(r.next_tokens[i])} at ${i}`}), el("td", {}, val(d))));
    }
    button.replaceWith(el("div", {}, el("b", {text: "Δ next-token loss with the feature zero-ablated (largest):"}), t));
  } catch (e) { showError(e); }
}

document.getElementById("form").addEventListener("submit", run);
