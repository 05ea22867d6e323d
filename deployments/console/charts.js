// Inline SVG charts for the Onramp console: no library, no build step.

const NS = "http://www.w3.org/2000/svg";

export const ARM_COLORS = ["var(--arm0)", "var(--arm1)", "var(--arm2)", "var(--arm3)", "var(--arm4)"];

// Arms in one order on every panel (control first), so an arm keeps its color everywhere.
export function orderArms(arms) {
  return [...arms].sort((a, b) => (a !== "control") - (b !== "control") || a.localeCompare(b));
}

export function armColor(arms, arm) {
  const i = orderArms(arms).indexOf(arm);
  return ARM_COLORS[(i < 0 ? 0 : i) % ARM_COLORS.length];
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// series: {name: [[x, y], ...]}; y in [0, 1]. Returns an <svg class="chart">.
export function lineChart(series, { yLabel = "", colors = {} } = {}) {
  const W = 640, H = 220, L = 40, R = 10, T = 10, B = 24;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  const xs = Object.values(series).flat().map((p) => p[0]);
  if (!xs.length) {
    svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no rewards yet"));
    return svg;
  }
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - y) * (H - T - B);
  for (const y of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(el("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#e3e6ec" }));
    svg.append(el("text", { x: L - 4, y: sy(y) + 3, "text-anchor": "end" }, `${Math.round(y * 100)}%`));
  }
  svg.append(el("text", { x: L, y: H - 6 }, clock(x0)));
  svg.append(el("text", { x: W - R, y: H - 6, "text-anchor": "end" }, clock(x1)));
  if (yLabel) svg.append(el("text", { x: L + 4, y: T + 10 }, yLabel));
  for (const [name, points] of Object.entries(series)) {
    if (!points.length) continue;
    const d = points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const path = el("path", { d, fill: "none", stroke: colors[name] || "var(--arm0)", "stroke-width": 2 });
    path.dataset.series = name;
    svg.append(path);
    if (points.length <= 40) {
      for (const p of points) svg.append(el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: colors[name] || "var(--arm0)" }));
    }
  }
  return svg;
}

// A small interval plot: value with [low, high] on a shared [lo, hi] axis.
export function intervalBar(value, low, high, lo, hi, color) {
  const W = 160, H = 16;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
  const s = (v) => 4 + ((v - lo) / (hi - lo || 1)) * (W - 8);
  if (lo < 0 && hi > 0) svg.append(el("line", { x1: s(0), x2: s(0), y1: 0, y2: H, stroke: "#c7ccd6" }));
  if ([value, low, high].every(Number.isFinite)) {
    svg.append(el("line", { x1: s(low), x2: s(high), y1: H / 2, y2: H / 2, stroke: color, "stroke-width": 2 }));
    svg.append(el("circle", { cx: s(value), cy: H / 2, r: 3.5, fill: color }));
  }
  return svg;
}
