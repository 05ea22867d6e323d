// An in-memory twin of what the SDK touches in a browser: a manual clock and timers, a fetch
// that records requests and answers from a script, localStorage, document.cookie, sendBeacon
// and console.warn.
import { createClient } from '../onramp.js';

export function memoryStorage(initial = {}) {
  const m = new Map(Object.entries(initial));
  return {
    map: m,
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
  };
}

/** document.cookie twin: `jar()` is the cookie string, `jar.set(name, value)` writes one
 * (value as given: encode it the way the writer under test does). */
export function cookieJar(initial = {}) {
  const m = new Map(Object.entries(initial));
  const jar = () => [...m].map(([k, v]) => `${k}=${v}`).join('; ');
  jar.set = (k, v) => m.set(k, v);
  return jar;
}

export function fakeTimers(start = Date.UTC(2026, 0, 1)) {
  let t = start;
  let nextId = 1;
  const timers = new Map();
  const api = {
    now: () => t,
    setTimeout: (f, ms) => {
      const id = nextId++;
      timers.set(id, { at: t + Math.max(0, ms), f });
      return id;
    },
    clearTimeout: (id) => timers.delete(id),
    pending: () => [...timers.values()].map((x) => x.at - t).sort((a, b) => a - b),
    /** Move the clock forward, firing due timers in order, letting promises settle between. */
    async advance(ms) {
      const end = t + ms;
      for (;;) {
        await settle();
        const due = [...timers.entries()].filter(([, x]) => x.at <= end).sort((a, b) => a[1].at - b[1].at);
        if (!due.length) break;
        const [id, x] = due[0];
        timers.delete(id);
        t = Math.max(t, x.at);
        x.f();
      }
      t = end;
      await settle();
    },
  };
  return api;
}

export async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** fetch twin: `answer(req)` returns {status, headers, body} or throws (a network error). */
export function fakeFetch(answer = () => ({ status: 200, body: { success: true } })) {
  const requests = [];
  const fetch = async (url, init) => {
    const req = { url, ...init, json: init.body ? JSON.parse(init.body) : null };
    requests.push(req);
    const a = await answer(req);
    const headers = new Map(Object.entries(a.headers || {}));
    return {
      status: a.status,
      headers: { get: (k) => headers.get(k) ?? null },
      json: async () => a.body ?? {},
    };
  };
  return { fetch, requests };
}

let seed = 1;
export function seededRandom() {
  return () => {
    const b = new Uint8Array(16);
    for (let i = 0; i < 16; i++) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      b[i] = seed & 0xff;
    }
    return b;
  };
}

export function client(over = {}) {
  const timers = over.timers || fakeTimers();
  const storage = over.storage || memoryStorage();
  const net = over.net || fakeFetch(over.answer);
  const warnings = [];
  const c = createClient({
    host: 'http://onramp.test',
    writeKey: 'wk',
    decideKey: 'rk',
    storage,
    fetch: net.fetch,
    now: timers.now,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: seededRandom(),
    listenToPage: false,
    cookie: () => '',
    warn: (message) => warnings.push(message),
    ...over.options,
  });
  return { c, timers, storage, net, warnings };
}
