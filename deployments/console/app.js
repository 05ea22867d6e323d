// The Onramp console: log in with a read key (kept in sessionStorage only), then poll the
// panels every few seconds. Data comes from GET api/panels (every polled panel in one answer;
// api/<panel> for one) with Authorization: Bearer <key>.
import { h, renderCatalog, renderExperiments, renderFunnel, renderHealth, renderLearning, renderUser } from "./panels.js";

const KEY = "onramp.console.readKey";
const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

// GET api/<path>; `pending`: that request already sent (index.html's first one).
async function api(path, pending) {
  const key = sessionStorage.getItem(KEY);
  const r = await (pending || fetch(`api/${path}`, { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" }));
  if (r.status === 401) throw new Unauthorized("this key was refused");
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || `HTTP ${r.status}`);
  return body;
}

// The polled panels; one request brings them all (api/panels), the range's experiments with them.
const PANELS = {
  experiments: renderExperiments,
  learning: renderLearning,
  funnel: renderFunnel,
  health: renderHealth,
};
const panelsPath = () => `panels?range=${$("range").value}`;

let timer = null;
let polls = 0;

// A panel's data, or why there is none (a message).
function show(name, render, data, problem) {
  const section = $(name);
  if (data !== undefined && problem === undefined) {
    try {
      render(section.querySelector(".body"), data);
      section.dataset.state = "ok";
      section.dataset.updated = String(Date.now());
      section.querySelector(".panel-error")?.remove();
      return;
    } catch (err) {
      problem = err.message;
    }
  }
  section.dataset.state = "error";
  let note = section.querySelector(".panel-error");
  if (!note) section.querySelector(".head").append((note = h("span", { class: "error panel-error" })));
  note.textContent = problem || "no data";
}

async function load(name, path, render) {
  try {
    show(name, render, await api(path));
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    show(name, render, undefined, err.message);
  }
}

function showPanels(data) {
  const errors = data.errors || {};
  for (const [name, render] of Object.entries(PANELS)) show(name, render, data[name], errors[name]);
  polls += 1;
  $("status").textContent = `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000} s`;
  document.body.dataset.polls = String(polls);
}

async function poll() {
  if (document.hidden) return;
  let data;
  try {
    data = await api(panelsPath());
  } catch (err) {
    if (err instanceof Unauthorized) return logout(err.message);
    for (const [name, render] of Object.entries(PANELS)) show(name, render, undefined, err.message);
    return;
  }
  showPanels(data);
}

function showLogin(message = "") {
  clearInterval(timer);
  timer = null;
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("status").textContent = "";
  $("key").focus();
}

function logout(message = "") {
  sessionStorage.removeItem(KEY);
  showLogin(message);
}

// The first answer: index.html's request when it was sent with this key for this range.
function first() {
  const sent = window.onrampFirst;
  window.onrampFirst = undefined;
  const path = `${panelsPath()}&catalog=1`;
  if (sent && sent.key === sessionStorage.getItem(KEY) && $("range").value === "all") {
    return api(path, sent.response).catch((err) => (err instanceof Unauthorized ? Promise.reject(err) : api(path)));
  }
  return api(path);
}

async function open() {
  let data;
  try {
    data = await first();
  } catch (err) {
    return logout(err instanceof Unauthorized ? "That key was refused: paste a read key." : err.message);
  }
  show("catalog", renderCatalog, data.catalog);
  showPanels(data);
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  clearInterval(timer);
  timer = setInterval(poll, POLL_MS);
}

async function lookUp(event) {
  event.preventDefault();
  const section = $("user");
  const id = $("user-id").value.trim();
  if (!id) return;
  section.dataset.state = "loading";
  try {
    renderUser(section.querySelector(".body"), await api(`users/${encodeURIComponent(id)}`));
    section.dataset.state = "ok";
  } catch (err) {
    if (err instanceof Unauthorized) return logout(err.message);
    section.dataset.state = "error";
    section.querySelector(".body").replaceChildren(h("p", { class: "error" }, err.message));
  }
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  open();
});
$("logout").addEventListener("click", () => logout());
$("range").addEventListener("change", () => load("experiments", `experiments?range=${$("range").value}`, renderExperiments).catch((err) => logout(err.message)));
$("user-form").addEventListener("submit", lookUp);
document.addEventListener("visibilitychange", () => { if (!document.hidden && timer) poll(); });

if (sessionStorage.getItem(KEY)) open();
else showLogin();
