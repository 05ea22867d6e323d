// The Onramp console: log in with a read key (kept in sessionStorage only), then poll the
// panels every few seconds. Data comes from GET api/<panel> with Authorization: Bearer <key>.
import { h, renderCatalog, renderExperiments, renderFunnel, renderHealth, renderLearning, renderUser } from "./panels.js";

const KEY = "onramp.console.readKey";
const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

async function api(path) {
  const key = sessionStorage.getItem(KEY);
  const r = await fetch(`api/${path}`, { headers: { Authorization: `Bearer ${key}` }, cache: "no-store" });
  if (r.status === 401) throw new Unauthorized("this key was refused");
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || `HTTP ${r.status}`);
  return body;
}

const PANELS = {
  experiments: { path: () => `experiments?range=${$("range").value}`, render: renderExperiments },
  learning: { path: () => "learning", render: renderLearning },
  funnel: { path: () => "funnel", render: renderFunnel },
  health: { path: () => "health", render: renderHealth },
};

let timer = null;
let polls = 0;

async function load(name, path, render) {
  const section = $(name);
  try {
    const data = await api(path);
    render(section.querySelector(".body"), data);
    section.dataset.state = "ok";
    section.dataset.updated = String(Date.now());
    section.querySelector(".panel-error")?.remove();
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    section.dataset.state = "error";
    let note = section.querySelector(".panel-error");
    if (!note) section.querySelector(".head").append((note = h("span", { class: "error panel-error" })));
    note.textContent = err.message;
  }
}

async function poll() {
  if (document.hidden) return;
  try {
    await Promise.all(Object.entries(PANELS).map(([name, p]) => load(name, p.path(), p.render)));
    polls += 1;
    $("status").textContent = `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000} s`;
    document.body.dataset.polls = String(polls);
  } catch (err) {
    if (err instanceof Unauthorized) logout(err.message);
  }
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

async function open() {
  try {
    await load("catalog", "catalog", renderCatalog);
  } catch (err) {
    return logout(err instanceof Unauthorized ? "That key was refused: paste a read key." : err.message);
  }
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  await poll();
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
$("range").addEventListener("change", () => load("experiments", PANELS.experiments.path(), renderExperiments));
$("user-form").addEventListener("submit", lookUp);
document.addEventListener("visibilitychange", () => { if (!document.hidden && timer) poll(); });

if (sessionStorage.getItem(KEY)) open();
else showLogin();
