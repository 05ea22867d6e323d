// Generated from onramp.js by build.mjs: do not edit.
(function () {
'use strict';
// Onramp browser SDK: Segment-compatible track/identify/page/alias plus decide(). No dependencies.
//
// Events are queued (in memory and in localStorage, so a reload loses nothing), sent in batches to
// `${host}/v1/batch` when `flushAt` events are waiting or `flushIntervalMs` after the first one,
// retried with exponential backoff on network errors, 429 and 5xx (honouring Retry-After), and
// handed to navigator.sendBeacon when the page is hidden. Every event carries a messageId, an
// anonymousId persisted in localStorage and Onramp's session context (`context.onramp.sessionId`
// and a per-session `seq`). `decide()` never rejects and never waits longer than its timeout: on a
// timeout or an error it resolves with the caller's fallback.
//
// See README.md beside this file for the copy-paste snippets.

const VERSION = '0.1.0';

const DEFAULTS = {
  host: '',
  writeKey: '',
  decideKey: '',
  readKey: '', // deprecated alias of decideKey (before keys had scopes)
  flushAt: 20,
  flushIntervalMs: 1000,
  maxQueueSize: 1000,
  maxBatchBytes: 450 * 1024,
  maxBeaconBytes: 60 * 1024,
  retryBaseMs: 500,
  retryMaxMs: 30000,
  sessionTimeoutMs: 30 * 60 * 1000,
  decideTimeoutMs: 1500,
  storagePrefix: 'onramp',
  echoDecisions: true,
  listenToPage: true,
};

const STEP_EVENTS = new Set(['Step Viewed', 'Step Completed', 'Step Abandoned', 'Form Error']);

/** RFC 4122 version-4 id from `random` (a function returning 16 random bytes). */
function uuid4(random) {
  const b = random();
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function cryptoBytes() {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return b;
}

/** The delay before retry number `attempt` (1-based): exponential with full jitter, capped, and
 * never shorter than the server's Retry-After (seconds) when it sent one. */
function backoffMs(attempt, { baseMs, maxMs, retryAfterS = null, jitter = Math.random }) {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  const wait = exp / 2 + (exp / 2) * jitter();
  const floor = retryAfterS == null ? 0 : retryAfterS * 1000;
  return Math.max(Math.round(wait), Math.round(floor));
}

/** Retry-After header value -> seconds (delta-seconds or an HTTP date), or null. */
function parseRetryAfter(value, nowMs = Date.now()) {
  if (value == null || value === '') return null;
  const n = Number(value);
  if (Number.isFinite(n)) return Math.max(0, n);
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : Math.max(0, (t - nowMs) / 1000);
}

/** What a collector answer means for the batch that got it. */
function classifyStatus(status) {
  if (status >= 200 && status < 300) return 'done';
  if (status === 408 || status === 429 || status >= 500) return 'retry';
  return 'drop'; // 400: the valid events were accepted, the rest are in the DLQ; 401/413/415: permanent
}

function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
  };
}

function defaultStorage() {
  try {
    const s = globalThis.localStorage;
    const probe = '__onramp_probe__';
    s.setItem(probe, '1');
    s.removeItem(probe);
    return s;
  } catch {
    return memoryStorage(); // private mode, sandboxed iframe, node: keep working in memory
  }
}

function isoNow(ms) {
  return new Date(ms).toISOString();
}

function byteLength(text) {
  return typeof TextEncoder === 'function' ? new TextEncoder().encode(text).length : text.length;
}

/**
 * A client. `createClient(options)` is what `init()` calls; tests pass their own `fetch`,
 * `storage`, `now`, `random`, `setTimeout`/`clearTimeout` and `sendBeacon`.
 */
function createClient(options = {}) {
  const o = { ...DEFAULTS, ...options };
  if (!o.writeKey) throw new Error('onramp: init({writeKey}) is required');
  const host = String(o.host || '').replace(/\/+$/, '');
  const storage = o.storage || defaultStorage();
  const now = o.now || (() => Date.now());
  const random = o.random || cryptoBytes;
  const fetchFn = o.fetch || ((...a) => globalThis.fetch(...a));
  const setT = o.setTimeout || ((f, ms) => globalThis.setTimeout(f, ms));
  const clearT = o.clearTimeout || ((t) => globalThis.clearTimeout(t));
  const beacon =
    o.sendBeacon ||
    (typeof navigator !== 'undefined' && navigator.sendBeacon
      ? (url, data) => navigator.sendBeacon(url, data)
      : null);
  const key = (name) => `${o.storagePrefix}.${name}`;
  const listeners = { error: [], sent: [], decision: [] };

  function load(name, fallback) {
    try {
      const v = storage.getItem(key(name));
      return v == null ? fallback : JSON.parse(v);
    } catch {
      return fallback;
    }
  }
  function save(name, value) {
    try {
      storage.setItem(key(name), JSON.stringify(value));
      return true;
    } catch (err) {
      emit('error', { kind: 'storage', error: err });
      return false;
    }
  }
  function emit(kind, detail) {
    for (const f of listeners[kind]) {
      try {
        f(detail);
      } catch {
        /* a listener must never break the SDK */
      }
    }
  }

  // -- identity and session ------------------------------------------------------------------
  let anonymousId = load('anonymousId', null);
  if (typeof anonymousId !== 'string' || !anonymousId) {
    anonymousId = uuid4(random);
    save('anonymousId', anonymousId);
  }
  let userId = load('userId', null);
  let session = load('session', null);

  function nextSeq() {
    const t = now();
    if (!session || typeof session.id !== 'string' || t - session.last > o.sessionTimeoutMs) {
      session = { id: uuid4(random), seq: 0, last: t };
    }
    const seq = session.seq;
    session = { ...session, seq: seq + 1, last: t };
    save('session', session);
    return { sessionId: session.id, seq };
  }

  // -- the queue -----------------------------------------------------------------------------
  let queue = load('queue', []);
  if (!Array.isArray(queue)) queue = [];
  const stats = { enqueued: 0, sent: 0, dropped: 0, retries: 0, batches: 0, beaconed: 0 };
  let inflight = 0; // events at the head of the queue being sent now
  let timer = null;
  let attempt = 0; // consecutive failed attempts
  let healthy = true; // the last send reached the collector
  let flushing = null;

  function persist() {
    save('queue', queue);
  }

  function enqueue(event) {
    queue.push(event);
    stats.enqueued += 1;
    while (queue.length > o.maxQueueSize) {
      // never drop what is being sent; drop the oldest waiting event
      queue.splice(inflight, 1);
      stats.dropped += 1;
      emit('error', { kind: 'queue_full', dropped: 1 });
    }
    persist();
    if (queue.length - inflight >= o.flushAt) schedule(0);
    else if (timer === null) schedule(o.flushIntervalMs);
  }

  function schedule(ms) {
    if (timer !== null) clearT(timer);
    timer = setT(() => {
      timer = null;
      flush();
    }, ms);
  }

  function takeBatch(limitBytes, limitCount) {
    const batch = [];
    let size = 64;
    for (const e of queue.slice(inflight)) {
      const n = byteLength(JSON.stringify(e)) + 1;
      if (batch.length && (size + n > limitBytes || batch.length >= limitCount)) break;
      batch.push(e);
      size += n;
    }
    return batch;
  }

  function body(batch) {
    // The write key rides in the body with a text/plain content type: a "simple" CORS request,
    // no preflight, and the same body works for sendBeacon (which cannot set headers).
    return JSON.stringify({ batch, sentAt: isoNow(now()), writeKey: o.writeKey });
  }

  async function sendOne() {
    const batch = takeBatch(o.maxBatchBytes, o.flushAt);
    if (!batch.length) return 'empty';
    inflight = batch.length;
    let outcome;
    let retryAfterS = null;
    try {
      const res = await fetchFn(`${host}/v1/batch`, {
        method: 'POST',
        headers: { 'Content-Type': 'text/plain' },
        body: body(batch),
        keepalive: false,
      });
      outcome = classifyStatus(res.status);
      if (outcome === 'retry') {
        const h = res.headers && res.headers.get ? res.headers.get('Retry-After') : null;
        retryAfterS = parseRetryAfter(h, now());
      }
      if (outcome === 'drop') {
        let detail = null;
        try {
          detail = await res.json();
        } catch {
          /* not JSON */
        }
        emit('error', { kind: 'rejected', status: res.status, detail, events: batch.length });
      }
    } catch (err) {
      outcome = 'retry'; // network error, collector down, offline
      emit('error', { kind: 'network', error: err });
    }
    inflight = 0;
    if (outcome === 'retry') {
      healthy = false;
      attempt += 1;
      stats.retries += 1;
      return { retry: backoffMs(attempt, { baseMs: o.retryBaseMs, maxMs: o.retryMaxMs, retryAfterS }) };
    }
    healthy = true;
    attempt = 0;
    const ids = new Set(batch.map((e) => e.messageId));
    queue = queue.filter((e) => !ids.has(e.messageId));
    persist();
    stats.batches += 1;
    if (outcome === 'done') stats.sent += batch.length;
    else stats.dropped += batch.length;
    emit('sent', { status: outcome, events: batch.length });
    return 'ok';
  }

  /** Send everything queued now; resolves when the queue is empty or a send must wait to retry
   * (the retry is scheduled). */
  function flush() {
    if (flushing) return flushing;
    if (timer !== null) {
      clearT(timer);
      timer = null;
    }
    flushing = (async () => {
      try {
        for (;;) {
          const r = await sendOne();
          if (r === 'empty') return true;
          if (r !== 'ok') {
            schedule(r.retry);
            return false;
          }
        }
      } finally {
        flushing = null;
      }
    })();
    return flushing;
  }

  /** Page is going away: hand what is queued to sendBeacon (only when the collector was
   * reachable; during an outage the events stay in localStorage for the next page load). */
  function beaconFlush() {
    if (!beacon || !healthy || inflight || !queue.length) return 0;
    let sent = 0;
    while (queue.length) {
      const batch = takeBatch(o.maxBeaconBytes, o.flushAt);
      const data = body(batch);
      const blob = typeof Blob === 'function' ? new Blob([data], { type: 'text/plain' }) : data;
      if (!beacon(`${host}/v1/batch`, blob)) break;
      queue = queue.slice(batch.length);
      sent += batch.length;
    }
    stats.beaconed += sent;
    persist();
    return sent;
  }

  // -- decisions -----------------------------------------------------------------------------
  const decisions = load('decisions', {}); // action id -> last decision that chose it

  function remember(answer) {
    if (!answer || !answer.decisionId || !answer.chosen) return;
    decisions[answer.chosen] = { decisionId: answer.decisionId, slot: answer.slot, at: now() };
    const keys = Object.keys(decisions);
    if (keys.length > 50) delete decisions[keys[0]];
    save('decisions', decisions);
  }

  function echoFor(stepId) {
    const d = stepId ? decisions[stepId] : null;
    return d ? d.decisionId : null;
  }

  async function decide(slot, opts = {}) {
    const timeoutMs = opts.timeoutMs ?? o.decideTimeoutMs;
    const fallback = opts.fallback ?? null;
    const started = now();
    const fall = (reason, status = null) => {
      const out = {
        decisionId: null,
        slot,
        chosen: fallback,
        ranked: [],
        fallback: true,
        reason,
        status,
        latencyMs: now() - started,
      };
      emit('decision', out);
      return out;
    };
    const decideKey = o.decideKey || o.readKey;
    if (!decideKey) return fall('no_decide_key');
    const payload = { slot };
    if (userId) payload.userId = userId;
    else payload.anonymousId = anonymousId;
    if (opts.candidates) payload.candidates = opts.candidates;
    if (opts.context) payload.context = opts.context;
    if (opts.decisionId) payload.decisionId = opts.decisionId;
    const ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    let timedOut = false;
    const request = (async () => {
      const res = await fetchFn(`${host}/v1/decide`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${decideKey}` },
        body: JSON.stringify(payload),
        signal: ctrl ? ctrl.signal : undefined,
      });
      const answer = await res.json().catch(() => null);
      return { status: res.status, answer };
    })();
    request.catch(() => {});
    let t = null;
    const timeout = new Promise((resolve) => {
      t = setT(() => {
        timedOut = true;
        if (ctrl) ctrl.abort();
        resolve(null);
      }, timeoutMs);
    });
    request.then(() => clearT(t), () => clearT(t));
    try {
      const r = await Promise.race([request, timeout]);
      if (r === null || timedOut) return fall('timeout');
      if (r.status !== 200 || !r.answer) return fall(`http_${r.status}`, r.status);
      const out = { ...r.answer, fallback: false, reason: null, status: 200, latencyMs: now() - started };
      if (out.chosen == null && fallback != null) {
        return { ...fall('nothing_eligible', 200), decisionId: out.decisionId };
      }
      if (o.echoDecisions) remember(out);
      emit('decision', out);
      return out;
    } catch (err) {
      return timedOut ? fall('timeout') : fall('network');
    }
  }

  // -- calls ---------------------------------------------------------------------------------
  function base(type, extra, callOpts = {}) {
    const { sessionId, seq } = nextSeq();
    const ctx = { ...(callOpts.context || {}) };
    const onramp = { ...(ctx.onramp || {}), sessionId, seq };
    const props = extra.properties;
    const stepId = callOpts.stepId || (props && typeof props.stepId === 'string' ? props.stepId : null);
    if (stepId) onramp.stepId = stepId;
    ctx.onramp = onramp;
    ctx.library = { name: 'onramp.js', version: VERSION };
    if (typeof location !== 'undefined') {
      ctx.page = ctx.page || {
        path: location.pathname,
        url: location.href,
        search: location.search,
        title: typeof document !== 'undefined' ? document.title : undefined,
        referrer: typeof document !== 'undefined' ? document.referrer : undefined,
      };
    }
    if (typeof navigator !== 'undefined') {
      if (navigator.userAgent) ctx.userAgent = navigator.userAgent;
      if (navigator.language) ctx.locale = navigator.language;
    }
    const ts = isoNow(now());
    const event = { type, messageId: uuid4(random), timestamp: ts, anonymousId, context: ctx, ...extra };
    if (userId) event.userId = userId;
    return event;
  }

  function identify(id, traits = {}, callOpts = {}) {
    if (id && typeof id === 'object') return identify(null, id, traits);
    if (id != null) {
      userId = String(id);
      save('userId', userId);
    }
    enqueue(base('identify', { traits }, callOpts));
  }

  /** Segment's alias: `userId` and `previousId` (default: the current userId, else the
   * anonymousId) are the same user. From then on the client's userId is `userId`. */
  function alias(id, previousId, callOpts = {}) {
    if (previousId && typeof previousId === 'object') return alias(id, null, previousId);
    if (id == null || id === '') throw new Error('onramp.alias(userId): a user id is required');
    const previous = previousId == null || previousId === '' ? userId || anonymousId : String(previousId);
    userId = String(id);
    save('userId', userId);
    enqueue(base('alias', { previousId: previous }, callOpts));
  }

  function track(event, properties = {}, callOpts = {}) {
    if (typeof event !== 'string' || !event) throw new Error('onramp.track(event): a name is required');
    const props = { ...properties };
    const stepId = callOpts.stepId || props.stepId;
    if (o.echoDecisions && STEP_EVENTS.has(event) && props.decisionId == null) {
      const echo = echoFor(stepId);
      if (echo) props.decisionId = echo;
    }
    enqueue(base('track', { event, properties: props }, callOpts));
  }

  function page(name, properties = {}, callOpts = {}) {
    const props = { ...properties };
    if (typeof location !== 'undefined') {
      props.path = props.path ?? location.pathname;
      props.url = props.url ?? location.href;
    }
    const extra = { properties: props };
    if (name) extra.name = name;
    enqueue(base('page', extra, callOpts));
  }

  /** Report what happened after a decision: `completed` or `abandoned` (a step decision: sends
   * Step Completed / Step Abandoned for the chosen step with the decision id) or `converted`
   * (sends Onboarding Completed). */
  function reportOutcome(decisionId, outcome, properties = {}) {
    const entry = Object.entries(decisions).find(([, d]) => d.decisionId === decisionId);
    const stepId = entry ? entry[0] : properties.stepId;
    const props = { ...properties, decisionId };
    if (outcome === 'converted') return track('Onboarding Completed', props);
    if (outcome !== 'completed' && outcome !== 'abandoned') {
      throw new Error(`onramp.reportOutcome: outcome must be completed, abandoned or converted, not ${outcome}`);
    }
    if (!stepId) throw new Error(`onramp.reportOutcome: unknown decision ${decisionId}; pass properties.stepId`);
    track(outcome === 'completed' ? 'Step Completed' : 'Step Abandoned', { ...props, stepId });
  }

  function reset() {
    userId = null;
    session = null;
    anonymousId = uuid4(random);
    for (const k of Object.keys(decisions)) delete decisions[k];
    for (const n of ['userId', 'session', 'decisions']) storage.removeItem(key(n));
    save('anonymousId', anonymousId);
  }

  function on(kind, f) {
    if (!listeners[kind]) throw new Error(`onramp.on: unknown event ${kind}`);
    listeners[kind].push(f);
    return () => listeners[kind].splice(listeners[kind].indexOf(f) >>> 0, 1);
  }

  function detach() {}
  let detachPage = detach;
  if (o.listenToPage && typeof addEventListener === 'function') {
    const hide = () => beaconFlush();
    const vis = () => {
      if (typeof document !== 'undefined' && document.visibilityState === 'hidden') beaconFlush();
    };
    const online = () => {
      attempt = 0;
      flush();
    };
    addEventListener('pagehide', hide);
    addEventListener('visibilitychange', vis);
    addEventListener('online', online);
    detachPage = () => {
      removeEventListener('pagehide', hide);
      removeEventListener('visibilitychange', vis);
      removeEventListener('online', online);
    };
  }
  if (queue.length) schedule(0); // what a previous page left behind

  return {
    version: VERSION,
    identify,
    alias,
    track,
    page,
    decide,
    reportOutcome,
    flush,
    reset,
    on,
    beaconFlush,
    close() {
      if (timer !== null) clearT(timer);
      timer = null;
      detachPage();
    },
    get anonymousId() {
      return anonymousId;
    },
    get userId() {
      return userId;
    },
    get sessionId() {
      return session ? session.id : null;
    },
    get queued() {
      return queue.length;
    },
    queuedEvents() {
      return queue.map((e) => ({ ...e }));
    },
    stats() {
      return { ...stats, queued: queue.length, attempt, healthy };
    },
  };
}

// -- the page-wide client (Segment-style globals) ------------------------------------------------
let client = null;

function need() {
  if (!client) throw new Error('onramp: call init({host, writeKey}) first');
  return client;
}

/** Create the page-wide client (a second call replaces it). */
function init(options) {
  if (client) client.close();
  client = createClient(options);
  return client;
}
const identify = (...a) => need().identify(...a);
const alias = (...a) => need().alias(...a);
const track = (...a) => need().track(...a);
const page = (...a) => need().page(...a);
const decide = (...a) => need().decide(...a);
const reportOutcome = (...a) => need().reportOutcome(...a);
const flush = () => need().flush();
const reset = () => need().reset();
const on = (...a) => need().on(...a);

globalThis.Onramp = { VERSION, uuid4, backoffMs, parseRetryAfter, classifyStatus, createClient, init, identify, alias, track, page, decide, reportOutcome, flush, reset, on };
})();
