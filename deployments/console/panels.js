// Renders each console panel from its JSON (GET /console/api/<panel>). Text goes in as text
// (never innerHTML): DLQ examples and profiles hold whatever clients sent.
import { armColor, intervalBar, lineChart, orderArms } from "./charts.js";

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, String(v));
    else node[k] = v;
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const pct = (v, digits = 1) => (Number.isFinite(v) ? `${(v * 100).toFixed(digits)}%` : "–");
const signedPct = (v) => (Number.isFinite(v) ? `${v >= 0 ? "+" : ""}${(v * 100).toFixed(1)}%` : "–");
const num = (v) => (Number.isFinite(v) ? v.toLocaleString() : "–");
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "–");

function numCell(metric, value, text, extra) {
  return h("td", { class: "num", "data-metric": metric, "data-value": Number.isFinite(value) ? value : "" }, text, extra);
}

// -- experiments -----------------------------------------------------------------------------

function estimateCell(metric, est, fmt = pct) {
  const v = est ? est.value : null;
  return numCell(metric, v, fmt(v), est ? h("div", { class: "ci" }, `[${fmt(est.low)}, ${fmt(est.high)}]`) : null);
}

function experimentTable(name, s) {
  const arms = Object.keys(s.arms);
  const wrap = h("div", { "data-exp": name });
  const srm = s.srm;
  wrap.append(
    h("h3", {}, `${name} `, h("span", { class: "muted" }, `${num(s.users)} users, ${Math.round(s.level * 100)}% intervals`)),
    srm.mismatch
      ? h("div", { class: "banner bad srm", "data-mismatch": "true", "data-p": srm.p_value },
          `Sample ratio mismatch: users per arm ${JSON.stringify(srm.observed)} against the configured split (p = ${srm.p_value.toExponential(2)}). Do not trust these results until assignment or logging is fixed.`)
      : h("div", { class: "banner ok srm", "data-mismatch": "false", "data-p": srm.p_value },
          `Split as configured (SRM p = ${srm.p_value.toFixed(3)})`),
  );
  const rows = arms.map((arm) => {
    const r = s.arms[arm];
    const color = armColor(arms, arm);
    const up = r.activation_uplift || r.conversion_uplift;
    return h("tr", { "data-arm": arm },
      h("td", {}, h("span", { class: "swatch", style: `background:${color}` }), arm),
      numCell("users", r.users, num(r.users)),
      numCell("decisions", r.decisions, num(r.decisions)),
      estimateCell("conversion", r.conversion),
      estimateCell("activation", r.activation),
      estimateCell("conversion_uplift", r.conversion_uplift, signedPct),
      estimateCell("activation_uplift", r.activation_uplift, signedPct),
      h("td", {}, up ? intervalBar(up.value, up.low, up.high, -1, 1, color) : arm === s.control ? h("span", { class: "tag" }, "control") : "–"),
    );
  });
  wrap.append(h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "arm"), h("th", { class: "num" }, "users"), h("th", { class: "num" }, "decisions"),
      h("th", { class: "num" }, "completion"), h("th", { class: "num" }, "activation"),
      h("th", { class: "num" }, "completion uplift"), h("th", { class: "num" }, "activation uplift"), h("th", {}, "uplift (−100% … +100%)"))),
    h("tbody", {}, rows)));
  return wrap;
}

export function renderExperiments(body, data) {
  const names = Object.keys(data.experiments);
  if (!names.length) return body.replaceChildren(h("p", { class: "muted" }, "No decisions yet."));
  body.replaceChildren(...names.map((n) => {
    const s = data.experiments[n];
    return s.error ? h("p", { class: "muted", "data-exp": n }, `${n}: ${s.users} users in this range (${s.error})`) : experimentTable(n, s);
  }));
}

// -- learning --------------------------------------------------------------------------------

function rollingRates(points, window = 3) {
  const out = [];
  for (let i = 0; i < points.length; i++) {
    let n = 0, k = 0;
    for (let j = Math.max(0, i - window + 1); j <= i; j++) { n += points[j][1]; k += points[j][2]; }
    if (n) out.push([points[i][0], k / n]);
  }
  return out;
}

export function renderLearning(body, data) {
  const arms = orderArms(Object.keys(data.completion.arms));
  const series = {}, colors = {};
  for (const arm of arms) { series[arm] = rollingRates(data.completion.arms[arm]); colors[arm] = armColor(arms, arm); }
  const l = data.learner;
  const d = data.drift;
  const tiles = h("div", { class: "tiles" },
    tile("exploration", l ? l.exploration : null, l ? pct(l.exploration) : "–", "exploration rate"),
    tile("version", l ? l.version : null, l ? `v${l.version}` : "–", "learner's model version"),
    tile("rollbacks", l ? (l.counters.rollbacks || 0) + (l.counters.control_rollbacks || 0) : null,
      l ? num((l.counters.rollbacks || 0) + (l.counters.control_rollbacks || 0)) : "–", "rollbacks"),
    tile("driftAlerts", d.alerts.length, num(d.alerts.length), "drift alerts (recent)"),
  );
  const legend = h("div", { class: "legend" }, arms.map((a) => h("span", {}, h("span", { class: "swatch", style: `background:${colors[a]}` }), a)));
  const versions = h("table", { id: "versions" },
    h("thead", {}, h("tr", {}, h("th", {}, "when"), h("th", {}, "version"), h("th", {}, "what"), h("th", {}, "why"))),
    h("tbody", {}, data.versions.slice(0, 12).map((v) =>
      h("tr", { "data-version": v.version, "data-action": v.action },
        h("td", {}, when(v.at * 1000)), h("td", {}, `v${v.version}${v.arm ? ` (${v.arm})` : ""}`),
        h("td", {}, v.action), h("td", {}, v.why)))));
  const alerts = h("ul", { id: "drift-alerts" }, d.alerts.length
    ? d.alerts.map((a) => h("li", { "data-kind": a.kind }, `${when(a.at * 1000)}: ${a.kind}${a.boosted ? " (exploration raised)" : ""}`))
    : h("li", { class: "muted" }, "no drift detected"));
  body.replaceChildren(
    tiles,
    h("div", { class: "cols" },
      h("div", {}, h("div", { class: "muted" }, "completion rate per arm, by decision time"), lineChart(series, { colors }), legend),
      h("div", {}, h("h3", {}, "Model versions"), data.versions.length ? versions : h("p", { class: "muted" }, "no model published yet"),
        h("h3", {}, "Drift"), alerts)),
  );
}

function tile(metric, value, text, label) {
  return h("div", { class: "tile", "data-metric": metric, "data-value": Number.isFinite(value) ? value : "" }, h("b", {}, text), h("span", {}, label));
}

// -- funnel ----------------------------------------------------------------------------------

export function renderFunnel(body, data) {
  const arms = orderArms(Object.keys(data.arms));
  if (!arms.length) return body.replaceChildren(h("p", { class: "muted" }, "No users with a decision yet."));
  const head = h("tr", {}, h("th", {}, "step"), arms.map((a) => h("th", {}, `${a} (${num(data.arms[a].users)})`)));
  const rows = data.steps.map((step, i) => h("tr", { "data-step": step }, h("td", {}, `${i + 1}. ${step}`),
    arms.map((arm) => {
      const r = data.arms[arm].steps.find((s) => s.step === step) || {};
      return h("td", { "data-arm": arm, "data-metric": "users", "data-value": r.users ?? "" },
        h("div", { class: "bar", style: `width:${Math.round((r.rate || 0) * 100)}%;background:${armColor(arms, arm)}` }),
        `${pct(r.rate)} (${num(r.users)})`,
        Number.isFinite(r.dropOff) && i > 0 ? h("span", { class: "ci" }, ` drop-off ${pct(r.dropOff)}`) : null);
    })));
  const done = h("tr", { "data-step": "onboarding completed" }, h("td", {}, "onboarding completed"),
    arms.map((arm) => h("td", { "data-arm": arm, "data-metric": "completed", "data-value": data.arms[arm].completed }, num(data.arms[arm].completed))));
  body.replaceChildren(h("table", {}, h("thead", {}, head), h("tbody", {}, rows, done)));
}

// -- data health -----------------------------------------------------------------------------

export function renderHealth(body, data) {
  const f = data.freshnessMs || {};
  const rejected = Object.entries(data.rejected || {});
  const examples = data.dlqExamples || {};
  const ms = (v) => (Number.isFinite(v) ? `${v} ms` : "–");
  body.replaceChildren(
    h("div", { class: "tiles" },
      tile("acceptedPerS", data.acceptedPerS, Number.isFinite(data.acceptedPerS) ? data.acceptedPerS.toFixed(1) : "–", `events accepted/s (last ${data.windowS ?? "–"} s)`),
      tile("acceptedTotal", data.acceptedTotal, num(data.acceptedTotal), "events accepted"),
      tile("lateShare", data.lateShare, pct(data.lateShare, 2), "late events"),
      tile("consumerLag", data.consumerLag, num(data.consumerLag), "consumer lag (records)"),
      tile("freshnessP50", f.p50, ms(f.p50), "freshness p50"),
      tile("freshnessP99", f.p99, ms(f.p99), "freshness p99"),
    ),
    h("table", { id: "dlq" },
      h("thead", {}, h("tr", {}, h("th", {}, "rejected: stage/reason"), h("th", { class: "num" }, "count"), h("th", {}, "latest example"))),
      h("tbody", {}, rejected.length ? rejected.map(([key, n]) => {
        const ex = (examples[key.split("/").slice(1).join("/")] || [])[0];
        return h("tr", { "data-reason": key }, h("td", {}, key), numCell("count", n, num(n)),
          h("td", {}, ex ? [h("div", {}, ex.message), h("code", {}, ex.raw)] : h("span", { class: "muted" }, "–")));
      }) : h("tr", {}, h("td", { colSpan: 3, class: "muted" }, "nothing rejected")))),
  );
}

// -- catalog ---------------------------------------------------------------------------------

function rule(a) {
  const parts = [];
  if (a.requires && a.requires.length) parts.push(`after ${a.requires.join(", ")}`);
  if (a.segments) parts.push(`only ${a.segments.join(", ")}`);
  if (a.unless_done) parts.push(`not once ${a.unless_done} is done`);
  return parts.join("; ") || "always";
}

export function renderCatalog(body, data) {
  body.replaceChildren(
    h("p", { class: "muted" }, `version ${data.version}, ${data.source}, digest ${String(data.digest).slice(0, 12)}; steps: ${data.steps.join(" → ")}`),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "slot"), h("th", {}, "static flow (control)"), h("th", {}, "actions and eligibility"))),
      h("tbody", {}, data.slots.map((s) => h("tr", { "data-slot": s.name },
        h("td", {}, h("b", {}, s.name), h("div", { class: "muted" }, `${s.kind}: ${s.description}`)),
        h("td", {}, s.staticFlow.join(" → ")),
        h("td", {}, h("ul", {}, s.actions.map((a) => h("li", { "data-action": a.id }, h("code", {}, a.id), ` ${rule(a)}`)))))))),
  );
}

// -- user lookup -----------------------------------------------------------------------------

function historyItem(e) {
  if (e.kind === "decision") {
    const ranked = (e.ranked || []).map((r) => `${r.action}${Number.isFinite(r.score) ? ` ${r.score.toFixed(3)}` : ""}`).join(", ");
    return h("li", { "data-kind": "decision", "data-decision": e.decisionId },
      h("span", { class: "when" }, when(e.at)), h("span", { class: "tag" }, "decision"),
      ` ${e.slot}: showed `, h("b", {}, e.chosen), ` (p = ${Number.isFinite(e.propensity) ? e.propensity.toFixed(3) : "–"}, arm ${e.arm}, model v${e.modelVersion}${e.coldStart ? ", cold start" : ""})`,
      h("div", { class: "ci" }, `ranked: ${ranked || "–"}`));
  }
  return h("li", { "data-kind": "reward", "data-decision": e.decisionId },
    h("span", { class: "when" }, when(e.at)), h("span", { class: "tag" }, "reward"),
    ` ${e.action}: `, h("b", { class: e.reward > 0 ? "good" : "bad" }, `${e.reward} (${e.outcome})`));
}

export function renderUser(body, data) {
  const p = data.profile;
  body.replaceChildren(h("div", { class: "cols", "data-user": data.userKey },
    h("div", {},
      h("h3", {}, `Decisions and rewards (${data.history.length})`),
      data.historyKept ? h("ol", { class: "history", id: "user-history" }, data.history.map(historyItem))
        : h("p", { class: "muted" }, "No decision kept for this user (the console keeps the recent users' history)."),
    ),
    h("div", {},
      h("h3", {}, "Live profile"),
      p ? h("pre", { id: "user-profile" }, JSON.stringify(p, null, 1)) : h("p", { class: "muted" }, data.profileError || "no profile"),
      h("h3", {}, "Enrichment"),
      h("pre", { id: "user-enrichment" }, JSON.stringify(data.enrichment, null, 1)),
    )));
}
