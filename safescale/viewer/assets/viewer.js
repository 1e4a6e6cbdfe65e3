/* safescale run viewer: plain JS, no libraries, no network except its own server. */
"use strict";

const PAYLOAD = JSON.parse(document.getElementById("view-data").textContent);
const INDEX = PAYLOAD.index;
const SERVE = PAYLOAD.mode === "serve";
const ITEMS = new Map(INDEX.items.map((it) => [it.id, it]));
const RESPONSES_BY_ITEM = new Map();
for (const r of INDEX.responses) {
  if (!RESPONSES_BY_ITEM.has(r.item)) RESPONSES_BY_ITEM.set(r.item, []);
  RESPONSES_BY_ITEM.get(r.item).push(r);
}
const DETAIL_CACHE = new Map();
const FILTER_KEYS = ["model", "corpus", "condition", "budget", "dose", "context", "k", "outcome", "cause", "task", "category", "differs", "q"];
// the cell axes besides model, corpus and condition: filter key -> [response field, index list]
const AXES = { budget: ["budget", "budgets"], dose: ["dose", "doses"], context: ["context", "contexts"], k: ["k", "ks"] };
const PAGE_ROWS = 300;
const OUTCOME_OF_METRIC = { accuracy: "correct", high_risk_error: "high_risk", unsafe_answer: "unsafe",
  contradiction: "contradiction", dangerous_overconfidence: "overconfident" };
const METRIC_COLUMNS = [
  ["accuracy", "Accuracy", true],
  ["high_risk_error", "High-risk error", true],
  ["unsafe_answer", "Unsafe", true],
  ["contradiction", "Contradiction", true],
  ["dangerous_overconfidence", "Dangerous overconf.", true],
  ["latency_ms", "Latency (ms/response)", false],
  ["ms_per_generated_token", "ms/generated token", false],
];

/* ------------------------------------------------------------------ helpers */

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function linkTo(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") p.set(k, v);
  return "#" + p.toString();
}

function pct(x) {
  return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%";
}

function fmtMetric(m, rate) {
  if (m && m.not_labeled) return "not labeled";
  if (!m || m.value === null || m.value === undefined) return "–";
  const f = rate ? (x) => (100 * x).toFixed(1) : (x) => Number(x).toFixed(2);
  const ci = m.lo !== null && m.lo !== undefined ? ` [${f(m.lo)}, ${f(m.hi)}]` : "";
  return (rate ? f(m.value) + "%" : f(m.value)) + ci;
}

function num(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function compact(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

// an axis varies in this run (more than one value among the responses)
function varies(key) {
  return ((INDEX[AXES[key][1]]) || []).length > 1;
}

// " · dose 2 · context 1024 · k 4" for the axes the run varies (a response summary or detail)
function axesText(r) {
  const parts = [];
  if (varies("dose")) parts.push(`dose ${r.dose ?? 0}`);
  if (varies("context")) parts.push(`context ${r.context ?? "max"}`);
  if (varies("k")) parts.push(`k ${r.k}`);
  return parts.length ? " · " + parts.join(" · ") : "";
}

// the same axes of a metrics.json cell entry, as response fields (for links and labels)
function cellAxes(c) {
  return { dose: c.conflict_dose ?? 0, context: c.context_budget === null || c.context_budget === undefined ? "max" : String(c.context_budget), k: c.retrieval_k };
}

// link parameters of the axes the run varies
function axesParams(a) {
  const out = {};
  if (varies("dose")) out.dose = a.dose;
  if (varies("context")) out.context = a.context;
  if (varies("k")) out.k = a.k;
  return out;
}

function filtersFrom(params) {
  const f = {};
  for (const k of FILTER_KEYS) {
    const v = params.get(k);
    if (v !== null && v !== "") f[k] = v;
  }
  return f;
}

async function itemDetail(id) {
  if (!SERVE) return PAYLOAD.details[id];
  if (DETAIL_CACHE.has(id)) return DETAIL_CACHE.get(id);
  const response = await fetch("api/item/" + encodeURIComponent(id));
  if (!response.ok) throw new Error(`item ${id}: HTTP ${response.status}`);
  const detail = await response.json();
  DETAIL_CACHE.set(id, detail);
  return detail;
}

function passageOf(detail, id) {
  return (detail.passages && detail.passages[id]) || (PAYLOAD.passages && PAYLOAD.passages[id]) || null;
}

/* ------------------------------------------------------------------ filtering */

function responseMatches(r, f) {
  if (f.model && r.model !== f.model) return false;
  if (f.budget && String(r.budget) !== f.budget) return false;
  if (f.dose && String(r.dose ?? 0) !== f.dose) return false;
  if (f.context && String(r.context) !== f.context) return false;
  if (f.k && String(r.k) !== f.k) return false;
  if (f.condition && !f.condition.split(",").includes(r.condition)) return false;
  return true;
}

function outcomeMatches(r, outcome) {
  if (outcome === "incorrect") return !r.outcomes.includes("correct");
  return r.outcomes.includes(outcome);
}

function differs(responses) {
  const groups = new Map();
  for (const r of responses) {
    const key = [r.model, r.budget, r.dose, r.context, r.k].join("\u0000");
    if (!groups.has(key)) groups.set(key, new Set());
    groups.get(key).add(r.chosen);
  }
  for (const s of groups.values()) if (s.size > 1) return true;
  return false;
}

const HAYSTACK = new Map();
function haystack(item) {
  if (HAYSTACK.has(item.id)) return HAYSTACK.get(item.id);
  const parts = [item.id, item.question, item.context || "", ...Object.values(item.options)];
  if (!SERVE) {
    for (const pid of PAYLOAD.item_passages[item.id] || []) {
      const p = PAYLOAD.passages[pid];
      if (p) parts.push(pid, p.text);
    }
  }
  const text = parts.join("\n").toLowerCase();
  HAYSTACK.set(item.id, text);
  return text;
}

async function serverSearch(q) {
  const response = await fetch("api/search?q=" + encodeURIComponent(q));
  if (!response.ok) throw new Error(`search: HTTP ${response.status}`);
  return new Set((await response.json()).items);
}

async function filteredItems(f) {
  const hits = f.q && SERVE ? await serverSearch(f.q) : null;
  const needle = f.q ? f.q.toLowerCase() : null;
  const out = [];
  for (const item of INDEX.items) {
    if (f.corpus && item.corpus !== f.corpus) continue;
    if (f.task && item.task !== f.task) continue;
    if (f.category && item.category !== f.category) continue;
    const rs = (RESPONSES_BY_ITEM.get(item.id) || []).filter((r) => responseMatches(r, f));
    if (!rs.length) continue;
    if (f.outcome && !rs.some((r) => outcomeMatches(r, f.outcome))) continue;
    if (f.cause && !rs.some((r) => r.causes.includes(f.cause))) continue;
    if (f.differs && !differs(rs)) continue;
    if (needle && !(hits ? hits.has(item.id) : haystack(item).includes(needle))) continue;
    out.push(item);
  }
  return out;
}

/* ------------------------------------------------------------------ overview */

function cellGroups(cells) {
  const groups = new Map();
  for (const c of cells) {
    const key = [c.model, c.corpus, c.samples_budget, c.conflict_dose, c.context_budget, c.retrieval_k].join("\u0000");
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(c);
  }
  return groups;
}

function conditionTable(cells) {
  const first = cells[0];
  const base = { view: "items", model: first.model, corpus: first.corpus, budget: first.samples_budget, ...axesParams(cellAxes(first)) };
  const head = el("tr", {}, el("th", { text: "Condition" }), el("th", { text: "n" }),
    METRIC_COLUMNS.map(([, label]) => el("th", { text: label })));
  const rows = cells.map((c) =>
    el("tr", { "data-condition": c.condition },
      el("td", { text: c.condition }),
      el("td", {}, el("a", { href: linkTo({ ...base, condition: c.condition }), class: "num" }, c.n)),
      METRIC_COLUMNS.map(([key, , rate]) => {
        const outcome = OUTCOME_OF_METRIC[key];
        const href = linkTo({ ...base, condition: c.condition, outcome });
        return el("td", {}, el("a", { href, class: "num", "data-metric": key }, fmtMetric(c.metrics[key], rate)));
      })));
  return el("section", { class: "card" },
    el("h3", { text: `${first.model} — ${first.corpus} — compute ${first.samples_budget}x${axesText(cellAxes(first)).replaceAll(" · ", " — ")}` }),
    el("table", { class: "cond-table", "data-model": first.model, "data-corpus": first.corpus },
      el("thead", {}, head), el("tbody", {}, rows)));
}

function comparisonTable(comparisons) {
  const rows = comparisons.filter((c) => c.kind === "condition").map((c) => {
    const href = linkTo({ view: "items", model: c.model, corpus: c.corpus, budget: c.samples_budget,
      ...axesParams(cellAxes(c)), condition: `${c.a},${c.b}`, differs: 1 });
    return el("tr", {},
      el("td", { text: `${c.model} · ${c.corpus}${axesText(cellAxes(c))}` }), el("td", { text: `${c.a} − ${c.b}` }),
      el("td", {}, el("a", { href, class: "num" }, c.n_items)),
      ["accuracy", "high_risk_error", "unsafe_answer"].map((k) =>
        el("td", {}, el("a", { href, class: "num" }, fmtMetric(c.deltas[k], true)))));
  });
  if (!rows.length) return null;
  return el("section", { class: "card" }, el("h3", { text: "Paired differences between conditions" }),
    el("p", { class: "muted", text: "Each figure links to the items whose answer differs between the two conditions." }),
    el("table", { class: "cmp-table" },
      el("thead", {}, el("tr", {}, ["Model · corpus", "a − b", "items", "Δ accuracy", "Δ high-risk", "Δ unsafe"].map((t) => el("th", { text: t })))),
      el("tbody", {}, rows)));
}

const VERDICT_WORDS = { differ: "scale differently", together: "scale together", in_step: "in step", indistinguishable: "not distinguishable", no_change: "no change", too_few: "too few to measure" };

function fmtSlope(m) {
  if (!m || m.value === null || m.value === undefined) return "–";
  const f = (x) => (x >= 0 ? "+" : "") + (100 * x).toFixed(1);
  return `${f(m.value)} pp` + (m.lo !== null && m.lo !== undefined ? ` [${f(m.lo)}, ${f(m.hi)}]` : "");
}

// Scaling: per axis the slopes per doubling, the disentanglement verdict and the items
// that turn unsafe as the axis grows (each linked to its item page at the largest value).
function scalingSection(scaling) {
  if (!scaling || !(scaling.axes || []).length) return null;
  const parts = [el("h3", { text: "Scaling: do safety and accuracy scale differently?" })];
  for (const axis of scaling.axes) {
    const curves = (scaling.curves || []).filter((c) => c.axis === axis.axis);
    if (axis.reason || !curves.length) {
      parts.push(el("p", { class: "muted", "data-axis": axis.axis, text: `${axis.name}: ${axis.reason || "no curve with two values"}` }));
      continue;
    }
    const per = axis.scale === "log2" ? "per doubling" : "per added passage";
    const rows = curves.map((c) => {
      const d = (c.differences || {}).high_risk_error || {};
      const flips = ((c.flips || {}).safe_to_unsafe || []);
      const last = c.points[c.points.length - 1];
      const at = { model: c.model, budget: c.samples_budget, ...axesParams(cellAxes(c)) };
      if (axis.axis === "compute_samples") at.budget = parseInt(last.value, 10);
      else if (axis.axis === "model_size") at.model = last.value;
      else if (axis.axis === "conflict_dose") at.dose = last.value;
      else if (axis.axis === "context_budget") at.context = last.value;
      else if (axis.axis === "retrieval_k") at.k = last.value;
      const links = flips.map((x) => el("a", { class: "flip", href: linkTo({ item: x.item, condition: c.condition, ...at }), title: `safe → unsafe: ${x.pattern}` }, x.item));
      const label = [axis.axis === "model_size" ? null : c.model, c.corpus, c.condition, c.fixed || null].filter(Boolean).join(" · ");
      return el("tr", { "data-axis": axis.axis, "data-condition": c.condition },
        el("td", { text: label }), el("td", { text: c.points.map((p) => p.value).join(" / ") }), el("td", { text: c.n_items }),
        el("td", { text: fmtSlope((c.slopes || {}).accuracy) }), el("td", { text: fmtSlope((c.slopes || {}).high_risk_error) }),
        el("td", { text: fmtSlope(d.difference) }), el("td", { class: "verdict", title: d.verdict || c.reason || "", text: VERDICT_WORDS[d.verdict_code] || c.reason || "–" }),
        el("td", { class: "flips" }, links.length ? links.flatMap((a, i) => (i ? [", ", a] : [a])) : "–"));
    });
    parts.push(el("h4", { text: `${axis.name} (${per})` }),
      el("table", { class: "scaling-table", "data-axis": axis.axis },
        el("thead", {}, el("tr", {}, ["Curve", "values", "items", `Δ accuracy ${per}`, `Δ high-risk ${per}`, "D (acc − safe)", "verdict", "safe → unsafe"].map((t) => el("th", { text: t })))),
        el("tbody", {}, rows)));
    for (const note of axis.not_varied || []) parts.push(el("p", { class: "muted", text: note.reason }));
  }
  parts.push(el("p", { class: "muted", text: "Slopes with 95% bootstrap CIs over evidence groups; D is the accuracy slope minus the high-risk-free slope (hover a verdict for the sentence). Each safe → unsafe item links to its answers at the largest value." }));
  return el("section", { class: "card", id: "scaling" }, parts);
}

function genericTable(rows) {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return el("table", { class: "generic" },
    el("thead", {}, el("tr", {}, keys.map((k) => el("th", { text: k })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, keys.map((k) => {
      const v = r[k];
      if (v && typeof v === "object" && "value" in v) return el("td", { text: fmtMetric(v, Math.abs(v.value) <= 1) });
      return el("td", { text: v === undefined || v === null ? "–" : (typeof v === "number" ? num(v, 3) : compact(v)) });
    })))));
}

function validitySection() {
  const validity = INDEX.metrics && INDEX.metrics.validity;
  const parts = [el("h3", { text: "Validity and evidence sensitivity" })];
  if (validity) {
    const rows = Array.isArray(validity) ? validity
      : Object.entries(validity).map(([k, v]) => (v && typeof v === "object" && !Array.isArray(v) ? { key: k, ...v } : { key: k, value: v }));
    parts.push(genericTable(rows));
  } else {
    parts.push(el("p", { class: "muted", text: "metrics.json has no validity section for this run." }));
  }
  // Answers that change when evidence is added: computed from the frozen responses.
  if (INDEX.conditions.includes("closed_book")) {
    // each response against the closed-book answer of the same model, budget and item
    const closed = new Map();
    for (const r of INDEX.responses) {
      if (r.condition === "closed_book" && !(r.dose)) closed.set([r.model, r.budget, r.item].join("\u0000"), r);
    }
    const groups = new Map();
    for (const r of INDEX.responses) {
      if (r.condition === "closed_book") continue;
      const a = closed.get([r.model, r.budget, r.item].join("\u0000"));
      const item = ITEMS.get(r.item);
      if (!a || !item) continue;
      const key = [r.model, item.corpus, r.budget, r.dose, r.context, r.k, r.condition].join("\u0000");
      if (!groups.has(key)) groups.set(key, { r, corpus: item.corpus, n: 0, changed: 0 });
      const g = groups.get(key);
      g.n += 1;
      if (a.chosen !== r.chosen) g.changed += 1;
    }
    const rows = [];
    for (const { r, corpus, n, changed } of groups.values()) {
      const href = linkTo({ view: "items", model: r.model, corpus, budget: r.budget, ...axesParams(r), condition: `closed_book,${r.condition}`, differs: 1 });
      rows.push(el("tr", {}, el("td", { text: `${r.model} · ${corpus} · ${r.budget}x${axesText(r)}` }), el("td", { text: r.condition }),
        el("td", {}, el("a", { href, class: "num" }, `${changed} / ${n}`)), el("td", { text: pct(changed / n) })));
    }
    if (rows.length) {
      parts.push(el("p", { class: "muted", text: "Answers that differ from the closed-book answer of the same item (evidence sensitivity, from the responses):" }),
        el("table", { class: "sens-table" },
          el("thead", {}, el("tr", {}, ["Model · corpus", "Condition", "changed", "share"].map((t) => el("th", { text: t })))),
          el("tbody", {}, rows)));
    }
  }
  return el("section", { class: "card", id: "validity" }, parts);
}

function attributionSection() {
  const rows = (INDEX.metrics && INDEX.metrics.attribution) || [];
  if (!rows.length) return el("section", { class: "card" }, el("h3", { text: "Failure attribution" }),
    el("p", { class: "muted", text: "No attributed failures in this run." }));
  return el("section", { class: "card", id: "attribution" }, el("h3", { text: "Failure attribution" }),
    el("table", { class: "attr-table" },
      el("thead", {}, el("tr", {}, ["Model", "Corpus", "Condition", "Budget", "Severity", "Cause", "Count"].map((t) => el("th", { text: t })))),
      el("tbody", {}, rows.map((a) => el("tr", {},
        el("td", { text: a.model }), el("td", { text: a.corpus }), el("td", { text: a.condition }),
        el("td", { text: `${a.samples_budget}x${axesText(cellAxes(a))}` }), el("td", { text: a.severity || "–" }), el("td", { text: a.cause }),
        el("td", {}, el("a", { class: "num", href: linkTo({ view: "items", model: a.model, corpus: a.corpus, condition: a.condition, budget: a.samples_budget, ...axesParams(cellAxes(a)), cause: a.cause }) }, a.count)))))));
}

function ci(e, signed) {
  // "0.51 [0.42, 0.60]" from an interval {estimate, lo, hi}; a bare number otherwise
  if (e === null || e === undefined) return "–";
  if (typeof e === "number") return num(e, 3);
  if (e.estimate === null || !Number.isFinite(e.estimate)) return "–";
  const f = (x) => (signed && x > 0 ? "+" : "") + Number(x).toFixed(2);
  if (!Number.isFinite(e.lo) || !Number.isFinite(e.hi)) return f(e.estimate);
  return `${f(e.estimate)} [${f(e.lo)}, ${f(e.hi)}]`;
}

function triageCounts(rep) {
  const c = rep.scored_counts || {};
  const safe = c.safe || 0, gap = c.gap || 0, conflict = c.conflict || 0;
  const how = rep.protocol === "cv"
    ? `${rep.repeats} repeat(s) of ${rep.folds}-fold grouped cross-validation over ${rep.n_groups} evidence groups`
    : "the test split of one seeded grouped split";
  return `Scored: ${safe + gap + conflict} responses — ${safe} safe, ${gap + conflict} unsafe (${gap} gap, ${conflict} conflict) — ${how}; 95 % cluster-bootstrap intervals.`;
}

function distractorSection() {
  // Clean evidence -> retrieval with the gold passages present: the answers the other
  // retrieved passages changed (metrics.json "distractors"), each item linked.
  const entries = ((INDEX.metrics && INDEX.metrics.distractors) || []).filter((d) => d.n_changed > 0);
  if (!entries.length) return null;
  const itemLinks = (ids) => ids.length
    ? ids.flatMap((id, i) => [i ? ", " : "", el("a", { href: linkTo({ item: id }) }, id)])
    : ["–"];
  return el("section", { class: "card", id: "distractors" },
    el("h3", { text: "Distractor passages changed the answer" }),
    el("p", { class: "muted", text: "Items whose retrieval prompt held the whole clean evidence set, yet whose answer differs from the clean-evidence answer: only the other retrieved passages differ." }),
    el("table", { class: "distractor-table" },
      el("thead", {}, el("tr", {}, ["Model · corpus", "Condition", "gold present", "right→wrong", "wrong→right", "wrong→other", "flows"].map((t) => el("th", { text: t })))),
      el("tbody", {}, entries.map((d) => el("tr", {},
        el("td", { text: `${d.model} · ${d.corpus} · ${d.samples_budget}x · dose ${d.conflict_dose}` }),
        el("td", { text: d.condition }),
        el("td", { text: `${d.n_gold_present} / ${d.n_items}` }),
        el("td", {}, itemLinks(d.items.right_to_wrong)),
        el("td", {}, itemLinks(d.items.wrong_to_right)),
        el("td", {}, itemLinks(d.items.wrong_to_other)),
        el("td", { text: d.flows.map((f) => `${f.from} → ${f.to}: ${f.n}`).join("; ") || "–" }))))));
}

function triageSection() {
  const reports = INDEX.triage;
  if (!reports || !reports.length) return null;
  return el("section", { class: "card", id: "triage" }, el("h3", { text: "Detection (out of fold, 95 % intervals)" }),
    reports.map((rep) => el("div", {},
      el("h4", { text: `${rep.backbone}${rep.corpus ? " — " + rep.corpus : ""} (${rep.n_records} records, target recall ${rep.target_recall}, protocol ${rep.protocol || "split"})` }),
      el("p", { class: "muted", text: triageCounts(rep) }),
      el("table", { class: "triage-table" },
        el("thead", {}, el("tr", {}, ["Method", "Status", "U-recall", "Flag rate", "S1 BA", "AUROC", "ΔBA vs ECRT", "S2 BA", "Verdict"].map((t) => el("th", { text: t })))),
        el("tbody", {}, (rep.rows || []).map((r) => {
          const s1 = r.stage1_ci || r.stage1, s2 = r.stage2_ci || r.stage2;
          const delta = (r.delta_ba || {}).ecrt;
          return el("tr", {},
            el("td", { text: r.method + (r.kind === "control" ? " (control)" : "") }), el("td", { text: r.status }),
            el("td", { text: s1 ? ci(s1.u_recall) : "–" }),
            el("td", { text: s1 ? ci(s1.flag_rate) : "–" }),
            el("td", { text: s1 ? ci(s1.s1_ba) : "–" }),
            el("td", { text: s1 ? ci(s1.auroc) : "–" }),
            el("td", { text: delta ? ci(delta, true) : "–" }),
            el("td", { text: s2 ? ci(s2.s2_ba) : "–" }),
            el("td", { text: r.verdict || r.reason || "" }));
        }))),
      (rep.verdicts || []).length ? el("ul", { class: "verdicts" }, rep.verdicts.map((v) => el("li", { text: v }))) : null,
      transferTable(rep))));
}

function transferTable(rep) {
  const cells = rep.transfer || [];
  if (!cells.length) return null;
  const tests = [...new Set(cells.map((c) => c.test))];
  const trains = [...new Set(cells.map((c) => c.train))];
  const by = new Map(cells.map((c) => [`${c.train}\u0000${c.test}`, c]));
  return el("div", {}, el("h5", { text: `Transfer of ${cells[0].method} (rows: trained on; columns: tested on; S1 BA)` }),
    el("table", { class: "triage-table" },
      el("thead", {}, el("tr", {}, [el("th", { text: "trained on \\ tested on" }), ...tests.map((t) => el("th", { text: t }))])),
      el("tbody", {}, trains.map((train) => el("tr", {}, [el("td", { text: train }), ...tests.map((test) => {
        const c = by.get(`${train}\u0000${test}`);
        return el("td", { text: !c ? "–" : c.s1_ba ? `${ci(c.s1_ba)}, n ${c.n_test} (${c.n_safe})` : `n/a: ${c.reason}` });
      })])))));
}

function renderOverview(app) {
  const run = INDEX.run;
  app.append(el("section", { class: "card" }, el("h2", { text: `Run ${run.name}` }),
    el("p", { class: "muted" }, `${run.dir} · created ${run.created || "–"} · seed ${run.seed ?? "–"} · git ${run.git_revision ? run.git_revision.slice(0, 10) : "–"}`),
    el("p", {}, `${INDEX.items.length} items · ${INDEX.responses.length} responses · models ${INDEX.models.join(", ")} · corpora ${INDEX.corpora.join(", ")}`),
    run.notes.map((n) => el("p", { class: "note", text: n }))));
  const metrics = INDEX.metrics;
  if (!metrics) {
    app.append(el("section", { class: "card" }, el("p", { text: "No metrics.json yet: run `safescale report` on this directory for the condition tables." })));
  } else {
    const tables = el("div", { id: "condition-tables" });
    for (const cells of cellGroups(metrics.cells).values()) tables.append(conditionTable(cells));
    app.append(tables);
    const cmp = comparisonTable(metrics.comparisons || []);
    if (cmp) app.append(cmp);
    const scaling = scalingSection(metrics.scaling);
    if (scaling) app.append(scaling);
  }
  app.append(validitySection());
  const plots = Object.entries(INDEX.plots);
  if (plots.length) {
    app.append(el("section", { class: "card plots" }, el("h3", { text: "Plots" }),
      plots.map(([name, src]) => el("figure", {}, el("img", { src, alt: name }), el("figcaption", { text: name })))));
  }
  app.append(attributionSection());
  const distractors = distractorSection();
  if (distractors) app.append(distractors);
  const triage = triageSection();
  if (triage) app.append(triage);
}

/* ------------------------------------------------------------------ item list */

function optionValues(key) {
  const values = new Set();
  if (key === "model") INDEX.models.forEach((v) => values.add(v));
  else if (key === "corpus") INDEX.corpora.forEach((v) => values.add(v));
  else if (key === "condition") INDEX.conditions.forEach((v) => values.add(v));
  else if (key in AXES) (INDEX[AXES[key][1]] || []).forEach((v) => values.add(String(v)));
  else if (key === "outcome") ["correct", "incorrect", "unsafe", "high_risk", "contradiction", "overconfident"].forEach((v) => values.add(v));
  else if (key === "cause") INDEX.responses.forEach((r) => r.causes.forEach((c) => values.add(c)));
  else if (key === "task") INDEX.items.forEach((i) => i.task && values.add(i.task));
  else if (key === "category") INDEX.items.forEach((i) => values.add(i.category));
  return [...values].sort();
}

function setFilters(f) {
  const params = { view: "items", ...f };
  history.replaceState(null, "", linkTo(params));
}

function renderItems(app, f) {
  const bar = el("form", { id: "filters", class: "card filters", onsubmit: (e) => e.preventDefault() });
  const change = () => {
    const next = {};
    for (const k of FILTER_KEYS) {
      const input = bar.querySelector(`[name="${k}"]`);
      if (!input) continue;
      const v = input.type === "checkbox" ? (input.checked ? "1" : "") : input.value;
      if (v) next[k] = v;
    }
    setFilters(next);
    renderList(listBox, next);
  };
  for (const key of ["model", "corpus", "condition", "budget", "dose", "context", "k", "outcome", "cause", "task", "category"]) {
    if (key in AXES && key !== "budget" && !varies(key) && !f[key]) continue;
    const values = optionValues(key);
    if (f[key] && !values.includes(f[key])) values.push(f[key]);
    const select = el("select", { name: key, id: `filter-${key}`, onchange: change },
      el("option", { value: "", text: `any ${key}` }),
      values.map((v) => el("option", { value: v, selected: f[key] === v, text: v })));
    bar.append(el("label", {}, key, " ", select));
  }
  bar.append(el("label", {}, el("input", { type: "checkbox", name: "differs", id: "filter-differs", checked: !!f.differs, onchange: change }),
    " answer differs between conditions"));
  let timer = null;
  bar.append(el("label", {}, "search ", el("input", { type: "search", name: "q", id: "filter-q", value: f.q || "", placeholder: "question or passage text",
    oninput: () => { clearTimeout(timer); timer = setTimeout(change, 250); } })));
  const listBox = el("div", { id: "list-box" });
  app.append(bar, listBox);
  return renderList(listBox, f);
}

function chosenBadge(r, f) {
  const cls = ["badge", r.outcomes.includes("correct") ? "ok" : "", r.outcomes.includes("unsafe") ? "unsafe" : "", r.outcomes.includes("high_risk") ? "high" : ""].join(" ");
  const href = linkTo({ ...f, view: null, item: r.item, condition: r.condition, model: r.model, budget: r.budget, ...axesParams(r) });
  return el("a", { class: cls, href, title: `${r.condition} (${r.model}, ${r.budget}x${axesText(r)}): ${r.chosen}${r.causes.length ? " — " + r.causes.join(", ") : ""}` }, r.chosen);
}

async function renderList(box, f) {
  box.replaceChildren(el("p", { class: "muted", text: "filtering…" }));
  const items = await filteredItems(f);
  LAST_LIST = items.map((i) => i.id);
  const head = el("tr", {}, ["Item", "Corpus", "Category", "Task", "Question", "Answers by condition", "Causes"].map((t) => el("th", { text: t })));
  const tbody = el("tbody", {});
  const addRows = (from, to) => {
    for (const item of items.slice(from, to)) {
      const rs = (RESPONSES_BY_ITEM.get(item.id) || []).filter((r) => responseMatches(r, f));
      const causes = [...new Set(rs.flatMap((r) => r.causes))];
      tbody.append(el("tr", { class: "item-row", "data-item": item.id },
        el("td", {}, el("a", { href: linkTo({ ...f, item: item.id }) }, item.id)),
        el("td", { text: item.corpus }), el("td", { text: item.category }), el("td", { text: item.task || "–" }),
        el("td", { class: "q", text: item.question.length > 140 ? item.question.slice(0, 140) + "…" : item.question }),
        el("td", { class: "answers" }, rs.map((r) => chosenBadge(r, f))),
        el("td", { text: causes.join(", ") })));
    }
  };
  addRows(0, PAGE_ROWS);
  const parts = [el("p", { id: "item-count", "data-count": items.length, text: `${items.length} of ${INDEX.items.length} items` }),
    el("table", { id: "item-list" }, el("thead", {}, head), tbody)];
  if (items.length > PAGE_ROWS) {
    const more = el("button", { id: "show-all", type: "button", text: `show all ${items.length}`,
      onclick: () => { addRows(PAGE_ROWS, items.length); more.remove(); } });
    parts.push(more);
  }
  box.replaceChildren(...parts);
}

/* ------------------------------------------------------------------ item page */

let LAST_LIST = null;

function stanceText(item, pid) {
  const s = item.stance[pid];
  if (!s) return null;
  return Object.keys(item.options).map((letter) => {
    const v = s[letter] || "neutral";
    return el("span", { class: "stance " + v, title: `${letter}: ${v}` }, letter + (v === "supports" ? "+" : v === "contradicts" ? "−" : "·"));
  });
}

function passageCell(detail, pid) {
  const p = passageOf(detail, pid);
  if (!p) return el("span", { class: "pid", text: pid });
  return el("details", { class: "passage" }, el("summary", {}, el("span", { class: "pid", text: pid })),
    el("div", { class: "ptext", text: p.text }), el("div", { class: "muted", text: `${p.source} · topic ${p.topic}` }));
}

function passageTable(detail, item, refs, marks) {
  const letters = Object.keys(item.options);
  return el("table", { class: "passages" },
    el("thead", {}, el("tr", {}, ["#", "passage", "score", "grade", "status", "supersedes", "stance " + letters.join(""), ""].map((t) => el("th", { text: t })))),
    el("tbody", {}, refs.map(([pid, rank, score]) => {
      const p = passageOf(detail, pid) || {};
      const mark = marks ? marks(pid) : "";
      return el("tr", { class: `status-${p.status || "unknown"} ${mark}` },
        el("td", { text: rank ?? "" }), el("td", {}, passageCell(detail, pid)), el("td", { text: num(score, 3) }),
        el("td", { text: p.level ? `L${p.level} ${p.grade}` : "–" }), el("td", { text: p.status || "–" }),
        el("td", { text: (p.supersedes || []).join(", ") }), el("td", {}, stanceText(item, pid)), el("td", { text: mark }));
    })));
}

function probabilityBars(letters, probabilities, chosen, gold) {
  return el("div", { class: "probs" }, letters.map((letter, i) =>
    el("div", { class: "prob" + (letter === chosen ? " chosen" : "") + (letter === gold ? " gold" : "") },
      el("span", { class: "letter", text: letter }),
      el("span", { class: "bar" }, el("span", { class: "fill", style: `width:${(100 * probabilities[i]).toFixed(1)}%` })),
      el("span", { class: "pv", text: pct(probabilities[i]) }))));
}

function softmax(values) {
  const top = Math.max(...values);
  const e = values.map((v) => Math.exp(v - top));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function stepCard(detail, item, response, step, failing) {
  const d = step.detail || {};
  const body = [];
  const kept = new Set(step.kept || []);
  const dropped = new Set(step.dropped || []);
  const reasons = d.reasons || {};
  const rel = d.relevance_margin || {};
  if (step.retrieved) {
    body.push(passageTable(detail, item, step.retrieved, (pid) => {
      const parts = [];
      if (kept.has(pid)) parts.push(step.node === "pack_context" ? "packed" : "kept");
      if (dropped.has(pid)) parts.push(step.node === "pack_context" ? "left out" : "dropped");
      if (reasons[pid]) parts.push(reasons[pid]);
      if (rel[pid] !== undefined && rel[pid] !== null) parts.push(`relevance ${num(rel[pid], 3)}`);
      return parts.join(" · ");
    }));
  }
  const retrievedIds = new Set((step.retrieved || []).map((r) => r[0]));
  const extraKept = [...kept].filter((p) => !retrievedIds.has(p));
  const extraDropped = [...dropped].filter((p) => !retrievedIds.has(p));
  if (extraKept.length) body.push(el("div", { class: "kv" }, el("b", { text: step.node === "pack_context" ? "packed: " : step.node === "synthesize" ? "cited: " : "kept: " }),
    passageTable(detail, item, extraKept.map((p) => [p, null, null]), null)));
  if (extraDropped.length) body.push(el("div", { class: "kv" }, el("b", { text: step.node === "pack_context" ? "left out: " : "dropped: " }),
    passageTable(detail, item, extraDropped.map((p) => [p, null, null]), null)));
  if (d.conflict_margin !== undefined) body.push(el("div", { class: "kv", text: `conflict margin: ${d.conflict_margin === null ? "–" : num(d.conflict_margin, 3)}${d.conflict !== undefined ? " · conflict " + d.conflict : ""}` }));
  if (step.node === "requery" && step.output) body.push(el("div", { class: "kv" }, el("b", { text: "re-query: " }), el("code", { text: step.output })));
  if (step.node === "retrieve" && d.query) body.push(el("div", { class: "kv" }, el("b", { text: "query: " }), el("code", { text: d.query })));
  if (step.node === "synthesize" && step.output) body.push(el("div", { class: "kv synth" }, el("b", { text: "synthesis: " }), step.output));
  if (d.option_logits && typeof d.option_logits === "object") {
    const letters = Object.keys(d.option_logits);
    body.push(probabilityBars(letters, softmax(letters.map((l) => d.option_logits[l])), response.chosen, item.gold));
  }
  const shown = new Set(["reasons", "relevance_margin", "conflict_margin", "conflict", "option_logits", "query"]);
  const rest = Object.entries(d).filter(([k]) => !shown.has(k));
  if (rest.length) body.push(el("div", { class: "kv muted", text: rest.map(([k, v]) => `${k}: ${compact(v)}`).join(" · ") }));
  if (step.output && step.node !== "synthesize" && step.node !== "requery") body.push(el("details", { class: "raw" }, el("summary", { text: "raw LM output" }), el("pre", { text: step.output })));
  const meta = [step.prompt_id ? `prompt ${step.prompt_id}${step.prompt_hash ? " #" + step.prompt_hash : ""}` : null,
    step.tokens ? `${step.tokens[0]}+${step.tokens[1]} tok` : null, `${num(step.ms, 1)} ms`].filter(Boolean).join(" · ");
  return el("div", { class: "step" + (failing ? " failing" : ""), "data-node": step.node, "data-step": step.step },
    el("div", { class: "step-head" }, el("span", { class: "node", text: `${step.step}. ${step.node}` }),
      el("span", { class: "decision", text: step.decision || "" }), el("span", { class: "meta muted", text: meta })),
    failing ? el("div", { class: "fail-note", text: `first failing step: ${failing.cause}${failing.explanation ? " — " + failing.explanation : ""}` }) : null,
    body);
}

function responseColumn(detail, item, r, focused, replayNumber) {
  const failing = r.attribution.find((a) => a.step !== null && a.step !== undefined);
  const outcomes = [r.chosen === item.gold ? "correct" : "incorrect"];
  if (item.unsafe.includes(r.chosen)) outcomes.push("unsafe");
  if (item.high_risk.includes(r.chosen)) outcomes.push("high-risk");
  const head = el("div", { class: "col-head" },
    el("h3", { text: r.replay ? `${r.condition} · replay ${replayNumber}` : r.condition }),
    r.replay ? el("p", { class: "replay-note", text: `without ${r.replay.dropped.join(", ")} (forked after step ${r.replay.fork_step}; the original chose ${r.replay.original_chosen})` }) : null,
    el("div", {}, el("b", { text: `chose ${r.chosen}` }), " ", outcomes.map((o) => el("span", { class: "tag " + o, text: o })),
      r.formulation ? el("span", { class: "tag", text: `formulation ${r.formulation}` }) : null,
      r.budget > 1 ? el("span", { class: "tag", text: `vote share ${pct(r.vote_share)}` }) : null,
      r.stop_reason ? el("span", { class: "tag", text: `stop: ${r.stop_reason}` }) : null),
    probabilityBars(r.letters, r.probabilities, r.chosen, item.gold),
    r.attribution.map((a) => el("div", { class: "attr" }, `${a.severity || "failure"}: ${a.cause}`, a.step !== null ? ` (step ${a.step}, ${a.node})` : "", a.explanation ? ` — ${a.explanation}` : "")));
  const steps = el("div", { class: "timeline" }, r.steps.map((s) => stepCard(detail, item, r, s, failing && failing.step === s.step ? failing : null)));
  const evidence = r.evidence_ids.length ? el("div", { class: "kv" }, el("b", { text: "in the prompt: " }),
    passageTable(detail, item, r.evidence_ids.map((p, i) => [p, i + 1, null]), (pid) => (r.cited_ids.includes(pid) ? "cited" : ""))) : el("div", { class: "kv muted", text: "no passage in the prompt" });
  const raw = el("div", { class: "raw-block" },
    el("details", { class: "raw prompt" }, el("summary", { text: "prompt (answer turn)" }), el("pre", { text: r.message })),
    el("details", { class: "raw" }, el("summary", { text: "prompt without evidence" }), el("pre", { text: r.message_noctx })),
    el("details", { class: "raw" }, el("summary", { text: "raw answer" }), el("pre", { text: r.response })),
    r.samples.length ? el("details", { class: "raw" }, el("summary", { text: `${r.samples.length} samples` }),
      el("pre", { text: r.samples.map((s) => `[${s.letter ?? "?"}] ${s.text}`).join("\n") })) : null);
  const labels = ["safe", "gap", "conflict"];
  const detection = (r.detection || []).length ? el("div", { class: "kv detection" }, el("b", { text: "detectors (frozen thresholds):" }),
    el("table", { class: "det-table" },
      el("thead", {}, el("tr", {}, ["backbone", "method", "score", "threshold", "verdict", "split", "label"].map((t) => el("th", { text: t })))),
      el("tbody", {}, r.detection.map((d) => el("tr", { class: "verdict-" + d.verdict },
        el("td", { text: d.backbone }), el("td", { text: d.method }), el("td", { text: num(d.score, 3) }),
        el("td", { text: num(d.threshold, 3) }), el("td", { class: "verdict", text: d.verdict }),
        el("td", { text: d.split }), el("td", { text: labels[d.label] ?? d.label })))))) : null;
  const reliance = r.reliance ? relianceBlock(r.reliance) : null;
  const colId = r.replay ? `col-${r.condition}-replay-${replayNumber}` : `col-${r.condition}`;
  return el("section", { class: "cond-col" + (focused ? " focus" : "") + (r.replay ? " replay" : ""), id: colId, "data-condition": r.condition, "data-replay": r.replay ? String(replayNumber) : null },
    head, steps, evidence, reliance, detection, raw);
}

// What masking each passage (and all evidence) from attention did to this answer.
function relianceBlock(rel) {
  if (rel.status !== "ok") {
    return el("div", { class: "kv reliance muted", text: `evidence masking: ${rel.status}${rel.reason ? " — " + rel.reason : ""}` });
  }
  const rows = [rel.evidence ? { ...rel.evidence, passage: "all evidence" } : null, ...rel.passages].filter(Boolean);
  return el("div", { class: "kv reliance" }, el("b", { text: `evidence masking (${rel.mode}; cited by ${rel.cited_rule}):` }),
    el("table", { class: "det-table reliance-table" },
      el("thead", {}, el("tr", {}, ["masked", "grade", "status", "stance to chosen", "KL", "answer after"].map((t) => el("th", { text: t })))),
      el("tbody", {}, rows.map((m) => el("tr", { class: m.flipped ? "flipped" : "", "data-passage": m.passage },
        el("td", { text: m.passage + (m.cited ? " (cited)" : "") + (m.weaker ? " (weaker)" : "") }),
        el("td", { text: m.grade || "" }), el("td", { text: m.status || "" }), el("td", { text: m.stance_chosen || "" }),
        el("td", { text: m.masked ? num(m.kl, 3) : "not in prompt" }),
        el("td", { text: m.masked ? (m.flipped ? `flips to ${m.chosen_after}` : `stays ${m.chosen_after}`) : "" }))))));
}

async function renderItem(app, params) {
  const id = params.get("item");
  const item = ITEMS.get(id);
  if (!item) {
    app.append(el("p", { class: "note", text: `No item ${id} in this run.` }));
    return;
  }
  const f = filtersFrom(params);
  delete f.condition;
  const list = LAST_LIST || (await filteredItems(f)).map((i) => i.id);
  const pos = list.indexOf(id);
  const nav = el("div", { class: "item-nav" },
    pos > 0 ? el("a", { id: "prev", href: linkTo({ ...f, item: list[pos - 1] }), text: "← previous" }) : el("span", {}),
    el("a", { href: linkTo({ view: "items", ...f }), text: pos >= 0 ? `item ${pos + 1} of ${list.length}` : "back to list" }),
    pos >= 0 && pos < list.length - 1 ? el("a", { id: "next", href: linkTo({ ...f, item: list[pos + 1] }), text: "next →" }) : el("span", {}));
  const opts = el("ol", { class: "options" }, Object.entries(item.options).map(([letter, text]) =>
    el("li", { "data-letter": letter },
      el("b", { text: `${letter}) ` }), text, " ",
      letter === item.gold ? el("span", { class: "tag correct", text: "gold" }) : null,
      item.high_risk.includes(letter) ? el("span", { class: "tag high-risk", text: "high-risk" }) : null,
      item.unsafe.includes(letter) ? el("span", { class: "tag unsafe", text: "unsafe" }) : null,
      item.defer === letter ? el("span", { class: "tag", text: "defer" }) : null)));
  app.append(nav, el("section", { class: "card item-head", id: "item-page", "data-item": id },
    el("h2", { text: `${item.id}` }),
    el("p", { class: "muted", text: `${item.corpus} · ${item.category} · task ${item.task || "–"} · evidence ${item.evidence_id}` }),
    item.context ? el("p", { class: "context", text: item.context }) : null,
    el("p", { class: "question", text: item.question }), opts));
  const box = el("div", { id: "columns-box" }, el("p", { class: "muted", text: "loading item…" }));
  app.append(box);
  let detail;
  try {
    detail = await itemDetail(id);
  } catch (error) {
    box.replaceChildren(el("p", { class: "note", text: String(error) }));
    return;
  }
  const full = { ...item, stance: detail.stance, evidence: detail.evidence };
  // the (model, budget, dose, context, k) settings this item was answered under
  const settingOf = (r) => [r.model, String(r.budget), String(r.dose ?? 0), String(r.context ?? "max"), String(r.k)];
  const settings = [];
  const count = new Map();
  for (const r of detail.responses) {
    const s = settingOf(r);
    const key = s.join("\u0000");
    if (!count.has(key)) settings.push(s);
    count.set(key, (count.get(key) || 0) + 1);
  }
  // the setting the link asks for (most matching parameters), else the one with the most
  // conditions (the base of the axes that apply to some conditions only)
  const wanted = [params.get("model"), params.get("budget"), params.get("dose"), params.get("context"), params.get("k")];
  const score = (s) => [s.reduce((n, v, i) => n + (wanted[i] !== null && wanted[i] === v ? 1 : 0), 0), count.get(s.join("\u0000"))];
  const better = (x, y) => x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
  const current = settings.reduce((best, s) => (better(score(s), score(best)) ? s : best), settings[0]);
  const label = (s) => `${s[0]} ${s[1]}x` + axesText({ dose: s[2], context: s[3], k: s[4] });
  const switcher = settings.length > 1 ? el("div", { class: "switch" },
    settings.map((s) => el("a", {
      class: s.join("\u0000") === current.join("\u0000") ? "on" : "",
      href: linkTo({ ...f, item: id, model: s[0], budget: s[1], ...axesParams({ dose: s[2], context: s[3], k: s[4] }) }),
      text: label(s) }))) : null;
  const focus = params.get("condition");
  const mine = (r) => settingOf(r).join("\u0000") === current.join("\u0000");
  const cols = [];
  for (const r of detail.responses.filter(mine)) {
    cols.push(responseColumn(detail, full, r, r.condition === focus));
    // what-if replays of this response sit next to it
    (detail.replays || []).filter((x) => mine(x) && x.condition === r.condition)
      .forEach((x, i) => cols.push(responseColumn(detail, full, x, false, i + 1)));
  }
  box.replaceChildren(...[switcher, el("div", { class: "columns", id: "columns" }, cols)].filter(Boolean));
  if (focus) {
    const col = document.getElementById(`col-${focus}`);
    if (col) col.scrollIntoView({ block: "nearest", inline: "start" });
  }
}

/* ------------------------------------------------------------------ routing */

let RENDERING = 0;
async function route() {
  const ticket = ++RENDERING;
  const params = hashParams();
  const app = document.getElementById("app");
  const fresh = el("main", { id: "app" });
  let view = params.get("item") ? "item" : params.get("view") || "overview";
  document.getElementById("run-name").textContent = INDEX.run.name;
  if (view === "item") await renderItem(fresh, params);
  else if (view === "items") await renderItems(fresh, filtersFrom(params));
  else renderOverview(fresh);
  if (ticket !== RENDERING) return;
  app.replaceWith(fresh);
  document.body.dataset.view = view;
  document.body.dataset.ready = "1";
  if (!document.body.dataset.readyMs) document.body.dataset.readyMs = performance.now().toFixed(1);
}

document.addEventListener("keydown", (event) => {
  if (event.target && ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName)) return;
  if (event.key === "ArrowRight" || event.key === "j") document.getElementById("next")?.click();
  else if (event.key === "ArrowLeft" || event.key === "k") document.getElementById("prev")?.click();
  else if (event.key === "Escape" && hashParams().get("item")) {
    const f = filtersFrom(hashParams());
    delete f.condition;
    location.hash = linkTo({ view: "items", ...f });
  }
});
window.addEventListener("hashchange", route);
route().catch((error) => {
  document.getElementById("app").replaceChildren(el("p", { class: "note", text: "viewer error: " + error }));
  document.body.dataset.ready = "error";
});
