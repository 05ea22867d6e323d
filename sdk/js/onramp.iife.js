// Generated from onramp.js by build.mjs: do not edit.
(function () {
'use strict';
// Onramp browser SDK: Segment-compatible track/identify/page/group/alias plus decide(). No
// dependencies.
//
// Events are queued (in memory and in localStorage, so a reload loses nothing), sent in batches to
// `${host}/v1/batch` when `flushAt` events are waiting or `flushIntervalMs` after the first one,
// retried with exponential backoff on network errors, 429 and 5xx (honouring Retry-After), and
// handed to navigator.sendBeacon when the page is hidden. Every event carries a messageId, an
// anonymousId persisted in localStorage and Onramp's session context (`context.onramp.sessionId`
// and a per-session `seq`). `decide()` never rejects and never waits longer than its timeout: on a
// timeout or an error it resolves with the caller's fallback.
//
// Like analytics.js, the SDK never throws into the page: every call returns a promise that
// resolves (a call result, a decision, a flush outcome) and never rejects; a bad call (track()
// without an event name, an unknown decision in reportOutcome, properties that are not a JSON
// object) is refused with a console warning and an `on('error')` report (kind "invalid_call"),
// and sends nothing.
//
// See README.md beside this file for the copy-paste snippets.

const VERSION = '0.1.0';

const DEFAULTS = {
  host: '',
  writeKey: '',
  decideKey: '',
  readKey: '', // deprecated alias of decideKey (before keys had scopes)
  userHash: '', // collector.identity_secret's HMAC of the signed-in userId, from your server
  flushAt: 20,
  flushIntervalMs: 1000,
  maxQueueSize: 1000,
  maxBatchBytes: 450 * 1024,
  maxBeaconBytes: 60 * 1024,
  maxEventBytes: 32 * 1024, // the collector refuses a bigger event (collector.max_event_bytes)
  retryBaseMs: 500,
  retryMaxMs: 30000,
  sessionTimeoutMs: 30 * 60 * 1000,
  decideTimeoutMs: 1500,
  storagePrefix: 'onramp',
  echoDecisions: true,
  listenToPage: true,
  reuseSegmentAnonymousId: false,
};

/** Where analytics.js keeps its anonymous id: a localStorage key and a cookie of this name. */
const SEGMENT_ANONYMOUS_ID_KEY = 'ajs_anonymous_id';

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

/** A call the SDK refuses (bad arguments): logged and reported, never thrown into the page. */
class BadCall extends Error {}

function isObject(v) {
  return v != null && typeof v === 'object' && !Array.isArray(v);
}

/** A stored session as this SDK writes it (another version's, or garbage, is not one). */
function validSession(s) {
  return (
    isObject(s) &&
    typeof s.id === 'string' &&
    s.id !== '' &&
    Number.isSafeInteger(s.seq) &&
    s.seq >= 0 &&
    Number.isFinite(s.last)
  );
}

/** The queued events of a stored queue (anything that is not one is left out). */
function validEvents(stored) {
  return Array.isArray(stored)
    ? stored.filter((e) => isObject(e) && typeof e.messageId === 'string' && e.messageId !== '')
    : [];
}

/** `value` as a JSON object for the event (`null`/`undefined`: empty); refuses anything else. */
function jsonObject(value, what) {
  if (value == null) return {};
  if (!isObject(value)) throw new BadCall(`${what} must be an object, not ${Array.isArray(value) ? 'an array' : typeof value}`);
  // a copy, taken now: an object the page changes later (or makes unserializable) must not
  // change, or stall, what was queued
  try {
    return JSON.parse(JSON.stringify(value));
  } catch (err) {
    throw new BadCall(`${what} cannot be sent as JSON (${err && err.message})`);
  }
}

/** The most characters of an id or an event name the collector takes (validation/wire.py). */
const MAX_ID_CHARS = 256;

/** An id argument (userId, groupId, previousId): a non-empty string of at most 256 characters,
 * or a finite number. A longer one is refused here: kept, it would get every later call
 * refused by the collector. */
function idArg(value, what) {
  const id = typeof value === 'number' && Number.isFinite(value) ? String(value) : value;
  if (typeof id !== 'string' || id === '') throw new BadCall(`${what} must be a non-empty string`);
  if (id.length > MAX_ID_CHARS) throw new BadCall(`${what} must be at most ${MAX_ID_CHARS} characters, not ${id.length}`);
  return id;
}

/** An id read back from storage: what idArg accepts, else null (another version's, or garbage). */
function storedIdOrNull(value) {
  return typeof value === 'string' && value !== '' && value.length <= MAX_ID_CHARS ? value : null;
}

function defaultWarn(message) {
  if (typeof console !== 'undefined' && console.warn) console.warn(message);
}

/** An id analytics.js stored: JSON-encoded (`"id"`, analytics.js in localStorage and classic
 * analytics.js in its cookie) or raw (analytics-next's cookie). Anything else: null. */
function storedId(raw) {
  if (raw == null) return null;
  let v = String(raw).trim();
  try {
    const parsed = JSON.parse(v);
    if (typeof parsed === 'string' || typeof parsed === 'number') v = String(parsed);
    else return null; // an object, null, true: not an id
  } catch {
    /* a raw id */
  }
  v = v.trim();
  return v && v.length <= 256 ? v : null;
}

/** One cookie's value from a `document.cookie` string (percent-decoded), or null. */
function cookieValue(cookies, name) {
  for (const part of String(cookies || '').split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== name) continue;
    const raw = part.slice(eq + 1).trim();
    try {
      return decodeURIComponent(raw);
    } catch {
      return raw;
    }
  }
  return null;
}

/** The anonymous id of an analytics.js (Segment) install on this page: its localStorage entry
 * first, then its cookie (analytics-next's own order), or null when there is none. */
function segmentAnonymousId({ storage, cookie }) {
  try {
    const v = storage ? storedId(storage.getItem(SEGMENT_ANONYMOUS_ID_KEY)) : null;
    if (v) return v;
  } catch {
    /* storage unavailable */
  }
  try {
    return storedId(cookieValue(cookie ? cookie() : '', SEGMENT_ANONYMOUS_ID_KEY));
  } catch {
    return null;
  }
}

function fallbackDecision(slot, fallback, reason, latencyMs = 0) {
  return { decisionId: null, slot, chosen: fallback, ranked: [], fallback: true, reason, status: null, latencyMs };
}

const EVENT_CALLS = ['identify', 'alias', 'group', 'track', 'page', 'reportOutcome'];

/** A client that refuses every call (what `createClient` gives when it cannot start: no
 * writeKey, no usable crypto): each call resolves, nothing is sent, `disabled` says why. */
function disabledClient(reason, warn) {
  const refuse = (name) => () => {
    warn(`onramp.${name}: ${reason}`);
    return Promise.resolve({ ok: false, event: null, error: reason });
  };
  const c = {
    version: VERSION,
    disabled: reason,
    anonymousId: '',
    userId: null,
    groupId: null,
    sessionId: null,
    queued: 0,
    decide: (slot, opts) => Promise.resolve(fallbackDecision(slot, isObject(opts) ? opts.fallback ?? null : null, 'disabled')),
    flush: () => Promise.resolve(false),
    reset() {},
    on: () => () => {},
    beaconFlush: () => 0,
    close() {},
    queuedEvents: () => [],
    stats: () => ({ enqueued: 0, sent: 0, dropped: 0, retries: 0, batches: 0, beaconed: 0, queued: 0, attempt: 0, healthy: false }),
  };
  for (const name of EVENT_CALLS) c[name] = refuse(name);
  return c;
}

/**
 * A client. `createClient(options)` is what `init()` calls; tests pass their own `fetch`,
 * `storage`, `cookie`, `now`, `random`, `setTimeout`/`clearTimeout`, `sendBeacon` and `warn`.
 * It never throws: without a writeKey (or if the browser lacks what it needs) it warns and
 * returns a client that refuses every call (`client.disabled` says why).
 */
function createClient(options = {}) {
  const opts = isObject(options) ? options : {};
  const warn = typeof opts.warn === 'function' ? opts.warn : defaultWarn;
  if (!opts.writeKey) {
    const reason = 'init({writeKey}) is required: this client sends nothing';
    warn(`onramp: ${reason}`);
    return disabledClient(reason, warn);
  }
  try {
    return makeClient({ ...DEFAULTS, ...opts }, warn);
  } catch (err) {
    const reason = `cannot start (${err && err.message}): this client sends nothing`;
    warn(`onramp: ${reason}`);
    return disabledClient(reason, warn);
  }
}

function makeClient(o, warn) {
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
  const cookie =
    o.cookie ||
    (() => (typeof document !== 'undefined' && typeof document.cookie === 'string' ? document.cookie : ''));
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
  if (storedIdOrNull(anonymousId) === null) {
    anonymousId = uuid4(random);
    save('anonymousId', anonymousId);
  }
  let userId = storedIdOrNull(load('userId', null));
  let groupId = storedIdOrNull(load('groupId', null));
  // decide()'s userHash and the user id it is for (null: not known yet, the next identify()'s).
  // init's comes from the page your server rendered for whoever signed in; one identify()
  // brought is that user's; either is kept with its user across page loads.
  let hash = { value: String(o.userHash || ''), user: null };
  if (!hash.value) {
    const stored = load('userHash', null);
    if (isObject(stored) && typeof stored.value === 'string' && stored.user === userId) hash = stored;
  }
  let session = load('session', null);

  /** The anonymous id for the next call: with `reuseSegmentAnonymousId`, analytics.js's when it
   * has one (read on every call, so an id Segment writes after init, or a new one after
   * Segment's reset(), is picked up); else this SDK's own. */
  function currentAnonymousId() {
    if (o.reuseSegmentAnonymousId) {
      const seg = segmentAnonymousId({ storage, cookie });
      if (seg && seg !== anonymousId) {
        anonymousId = seg;
        save('anonymousId', anonymousId); // kept if Segment's storage is cleared later
      }
    }
    return anonymousId;
  }
  currentAnonymousId();

  function nextSeq() {
    const t = now();
    // read again: another tab of this site may have taken seqs of the same session since
    // (unless this tab is further along in it: its own writes are failing)
    const stored = load('session', null);
    const ahead = validSession(session) && validSession(stored) && session.id === stored.id && session.seq > stored.seq;
    if (validSession(stored) && !ahead) session = stored;
    if (!validSession(session) || t - session.last > o.sessionTimeoutMs) {
      session = { id: uuid4(random), seq: 0, last: t };
    }
    const seq = session.seq;
    session = { ...session, seq: seq + 1, last: t };
    save('session', session);
    return { sessionId: session.id, seq };
  }

  // -- the queue -----------------------------------------------------------------------------
  let queue = validEvents(load('queue', []));
  const removed = new Set(); // messageIds this tab sent or dropped: not taken back from storage
  const stats = { enqueued: 0, sent: 0, dropped: 0, retries: 0, batches: 0, beaconed: 0 };
  let inflight = 0; // events at the head of the queue being sent now
  let timer = null;
  let attempt = 0; // consecutive failed attempts
  // the last send reached the collector; a page that starts with a stored backlog has not
  // seen it answer yet (the backlog says it did not, for the page before): until a send of
  // this page is acknowledged, a page hide leaves the queue stored rather than beacon it,
  // as a beacon's answer is never known
  let healthy = queue.length === 0;
  let flushing = null;
  let retryAt = 0; // while backing off (a failed send, Retry-After): no send before this time
  // events a batch at most: the collector refused a whole batch as too large (413, nothing
  // accepted: an operator lowered its limits, or a proxy in front has its own) and it was split
  let batchCap = Infinity;
  let closed = false; // close() or a second init(): nothing more is sent or scheduled

  /** Write this tab's queue, keeping what another tab of this site queued there (the key is
   * shared: writing this tab's queue alone would drop theirs). This tab sends only its own
   * events; another tab's stay stored until that tab sends them or the next page load takes
   * them (a repeat is one messageId, which the stream dedupes). */
  function persist() {
    const stored = validEvents(load('queue', []));
    let out = queue;
    if (stored.length) {
      const mine = new Set(queue.map((e) => e.messageId));
      const others = stored.filter((e) => !mine.has(e.messageId) && !removed.has(e.messageId));
      if (others.length) out = [...others.slice(-o.maxQueueSize), ...queue];
    }
    save('queue', out);
  }

  function forget(ids) {
    for (const id of ids) {
      removed.add(id);
      if (removed.size > 4 * o.maxQueueSize) removed.delete(removed.values().next().value);
    }
  }

  function enqueue(event) {
    queue.push(event);
    stats.enqueued += 1;
    while (queue.length > o.maxQueueSize) {
      // never drop what is being sent; drop the oldest waiting event (and not take it back
      // from storage, where it still is until the queue is written)
      forget(queue.splice(inflight, 1).map((e) => e.messageId));
      stats.dropped += 1;
      emit('error', { kind: 'queue_full', dropped: 1 });
    }
    persist();
    const wait = retryAt - now();
    if (wait > 0) {
      // backing off: a full queue waits for the retry too (sending at once would be a storm
      // against a collector that asked for time)
      if (timer === null) schedule(wait);
    } else if (queue.length - inflight >= o.flushAt) schedule(0);
    else if (timer === null) schedule(o.flushIntervalMs);
  }

  function schedule(ms) {
    if (closed) return;
    if (timer !== null) clearT(timer);
    timer = setT(() => {
      timer = null;
      flush();
    }, ms);
  }

  function takeBatch(limitBytes, limitCount) {
    limitCount = Math.min(limitCount, batchCap);
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
    const data = body(batch);
    try {
      const res = await fetchFn(`${host}/v1/batch`, {
        method: 'POST',
        headers: { 'Content-Type': 'text/plain' },
        body: data,
        // a send the browser finishes if the page closes meanwhile (keepalive bodies are
        // limited to 64 KB in all; a bigger batch is beaconed again on close instead)
        keepalive: byteLength(data) <= o.maxBeaconBytes,
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
        const accepted = detail && typeof detail.accepted === 'number' ? detail.accepted : 0;
        if (res.status === 413 && accepted === 0 && batch.length > 1) {
          // the request was too large, not its events: send them in smaller batches
          batchCap = Math.max(1, Math.floor(batch.length / 2));
          inflight = 0;
          emit('error', { kind: 'split', status: res.status, detail, events: batch.length, batchCap });
          return 'ok';
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
      const wait = backoffMs(attempt, { baseMs: o.retryBaseMs, maxMs: o.retryMaxMs, retryAfterS });
      retryAt = now() + wait;
      return { retry: wait };
    }
    healthy = true;
    attempt = 0;
    retryAt = 0;
    // a batch at the cap went through: try twice as many next time (a limit that was a
    // proxy's hiccup, or one oversized event among many, should not keep every later batch
    // at a single event); at flushAt the cap is gone
    if (batchCap !== Infinity && batch.length >= batchCap) batchCap = batchCap * 2 >= o.flushAt ? Infinity : batchCap * 2;
    const ids = new Set(batch.map((e) => e.messageId));
    forget(ids);
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
    if (closed) return Promise.resolve(false);
    if (flushing) return flushing;
    if (timer !== null) {
      clearT(timer);
      timer = null;
    }
    flushing = (async () => {
      try {
        for (;;) {
          if (closed) return false;
          const r = await sendOne();
          if (r === 'empty') return true;
          if (r !== 'ok') {
            schedule(r.retry);
            return false;
          }
        }
      } catch (err) {
        inflight = 0; // never reject: report it, the events stay queued for the next flush
        emit('error', { kind: 'internal', error: err });
        return false;
      } finally {
        flushing = null;
      }
    })();
    return flushing;
  }

  /** Page is going away: hand what is queued to sendBeacon (only when the collector was
   * reachable; during an outage the events stay in localStorage for the next page load). */
  function beaconFlush() {
    if (!beacon || !healthy || !queue.length) return 0;
    // a send in flight is beaconed again: the browser may cancel it with the page, and a
    // repeat is the same messageId, which the stream dedupes
    inflight = 0;
    let sent = 0;
    while (queue.length) {
      const batch = takeBatch(o.maxBeaconBytes, o.flushAt);
      const data = body(batch);
      const blob = typeof Blob === 'function' ? new Blob([data], { type: 'text/plain' }) : data;
      let ok = false;
      try {
        ok = beacon(`${host}/v1/batch`, blob);
      } catch (err) {
        emit('error', { kind: 'beacon', error: err });
      }
      if (!ok) break;
      const ids = new Set(batch.map((e) => e.messageId));
      forget(ids);
      queue = queue.filter((e) => !ids.has(e.messageId));
      sent += batch.length;
    }
    stats.beaconed += sent;
    persist();
    return sent;
  }

  // -- decisions -----------------------------------------------------------------------------
  // action id -> last decision that chose it (anything else stored there is dropped)
  const decisions = {};
  const storedDecisions = load('decisions', {});
  if (isObject(storedDecisions)) {
    for (const [k, v] of Object.entries(storedDecisions)) {
      if (isObject(v) && typeof v.decisionId === 'string') decisions[k] = v;
    }
  }

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

  /** Ask which action to show. Never rejects, never waits past its timeout: on a timeout, an
   * error, a refusal or a bad call it resolves with the caller's fallback. */
  async function decide(slot, opts = {}) {
    const started = now();
    if (opts == null) opts = {};
    const fallback = isObject(opts) ? opts.fallback ?? null : null;
    const fall = (reason, status = null) => {
      const out = { ...fallbackDecision(slot, fallback, reason, now() - started), status };
      emit('decision', out);
      return out;
    };
    try {
      if (typeof slot !== 'string' || !slot) throw new BadCall('a slot name is required');
      if (!isObject(opts)) throw new BadCall('options must be an object');
      return await ask(slot, opts, started, fallback, fall);
    } catch (err) {
      if (err instanceof BadCall) {
        report('decide', err);
        return fall('invalid_call');
      }
      emit('error', { kind: 'internal', error: err });
      return fall('error');
    }
  }

  async function ask(slot, opts, started, fallback, fall) {
    const timeoutMs = opts.timeoutMs ?? o.decideTimeoutMs;
    const decideKey = o.decideKey || o.readKey;
    if (!decideKey) return fall('no_decide_key');
    const payload = { slot };
    if (userId) {
      payload.userId = userId;
      const given = opts.userHash || (hash.user === null || hash.user === userId ? hash.value : '');
      if (given) payload.userHash = String(given);
    } else payload.anonymousId = currentAnonymousId();
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
      if (r.status !== 200 || !isObject(r.answer)) return fall(`http_${r.status}`, r.status);
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
  // Each call below checks its arguments (throwing BadCall), queues one event and returns it;
  // `guarded` turns that into the public call: a promise of {ok, event, error}, never a throw.

  function report(name, err) {
    const message = `onramp.${name}: ${err && err.message ? err.message : String(err)}`;
    if (err instanceof BadCall) {
      warn(message);
      emit('error', { kind: 'invalid_call', call: name, error: message });
    } else {
      warn(`${message} (an Onramp SDK error: the call was dropped)`);
      emit('error', { kind: 'internal', call: name, error: err });
    }
    return message;
  }

  function guarded(name, f) {
    return (...args) => {
      try {
        const event = f(...args);
        return Promise.resolve({ ok: true, event: JSON.parse(JSON.stringify(event)), error: null });
      } catch (err) {
        return Promise.resolve({ ok: false, event: null, error: report(name, err) });
      }
    };
  }

  function callOptions(value) {
    if (value == null) return {};
    if (!isObject(value)) throw new BadCall('options must be an object');
    const out = { ...value };
    if (value.context != null) out.context = jsonObject(value.context, 'options.context');
    if (value.stepId != null && typeof value.stepId !== 'string') throw new BadCall('options.stepId must be a string');
    return out;
  }

  function base(type, extra, callOpts = {}) {
    const ctx = { ...(callOpts.context || {}) };
    const onramp = { ...(isObject(ctx.onramp) ? ctx.onramp : {}) };
    const props = extra.properties;
    const stepId = callOpts.stepId || (props && typeof props.stepId === 'string' ? props.stepId : null);
    if (stepId && stepId.length > MAX_ID_CHARS) throw new BadCall(`the stepId must be at most ${MAX_ID_CHARS} characters`);
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
    const event = {
      type,
      messageId: uuid4(random),
      timestamp: ts,
      anonymousId: currentAnonymousId(),
      context: ctx,
      ...extra,
    };
    if (userId) event.userId = userId;
    // measured as it will be sent (a margin for the session id and seq to come), before a seq
    // is taken: the collector refuses an event over its limit, and one that size would also
    // block the page-close send
    const size = byteLength(JSON.stringify(event)) + 128;
    if (size > o.maxEventBytes) {
      throw new BadCall(`the event is ${size} bytes; the collector refuses events over ${o.maxEventBytes}`);
    }
    const { sessionId, seq } = nextSeq();
    onramp.sessionId = sessionId;
    onramp.seq = seq;
    enqueue(event);
    return event;
  }

  function identify(id, traits, callOpts) {
    if (isObject(id)) return identify(null, id, traits);
    const t = jsonObject(traits, 'traits');
    const co = callOptions(callOpts);
    const given = takeUserHash(co);
    if (id != null) {
      userId = idArg(id, 'userId');
      save('userId', userId);
    }
    signedIn(given);
    return base('identify', { traits: { ...t } }, co);
  }

  /** The user is `userId` now: a hash given with the call is theirs; a kept one is kept if it
   * is theirs or was for nobody yet (init's), dropped if it was another user's. */
  function signedIn(given) {
    if (given != null) hash = { value: given, user: userId };
    else if (hash.user !== userId && hash.user !== null) hash = { value: '', user: null };
    else if (hash.value && userId) hash = { value: hash.value, user: userId };
    if (hash.value && hash.user) save('userHash', hash);
    else unsave('userHash');
  }

  function unsave(name) {
    try {
      storage.removeItem(key(name));
    } catch {
      /* storage unavailable: nothing kept */
    }
  }

  /** `options.userHash` of identify() and alias(): kept for decide(), not sent with the event. */
  function takeUserHash(co) {
    const hash = co.userHash;
    delete co.userHash;
    if (hash == null) return null;
    if (typeof hash !== 'string') throw new BadCall('options.userHash must be a string');
    return hash;
  }

  /** Segment's alias: `userId` and `previousId` (default: the current userId, else the
   * anonymousId) are the same user. From then on the client's userId is `userId`. */
  function alias(id, previousId, callOpts) {
    if (isObject(previousId)) return alias(id, null, previousId);
    if (id == null || id === '') throw new BadCall('a user id is required');
    const next = idArg(id, 'userId');
    const co = callOptions(callOpts);
    const given = takeUserHash(co);
    const previous =
      previousId == null || previousId === '' ? userId || currentAnonymousId() : idArg(previousId, 'previousId');
    userId = next;
    save('userId', userId);
    signedIn(given);
    return base('alias', { previousId: previous }, co);
  }

  /** Segment's group: the user belongs to account/team `groupId` (kept, like analytics.js keeps
   * it); `traits` describe the group. `group(traits)` updates the traits of the current group. */
  function group(id, traits, callOpts) {
    if (isObject(id)) return group(null, id, traits);
    const t = jsonObject(traits, 'traits');
    const co = callOptions(callOpts);
    const gid = id == null || id === '' ? groupId : idArg(id, 'groupId');
    if (!gid) throw new BadCall('a group id is required');
    groupId = gid;
    save('groupId', groupId);
    return base('group', { groupId: gid, traits: { ...t } }, co);
  }

  function track(event, properties, callOpts) {
    if (typeof event !== 'string' || !event) throw new BadCall('an event name is required');
    if (event.length > MAX_ID_CHARS) throw new BadCall(`an event name must be at most ${MAX_ID_CHARS} characters`);
    const props = { ...jsonObject(properties, 'properties') };
    const co = callOptions(callOpts);
    const stepId = co.stepId || props.stepId;
    if (o.echoDecisions && STEP_EVENTS.has(event) && props.decisionId == null) {
      const echo = echoFor(stepId);
      if (echo) props.decisionId = echo;
    }
    return base('track', { event, properties: props }, co);
  }

  /** `page(name?, properties?, options?)`, or Segment's `page(category, name, properties?,
   * options?)` when the second argument is a string. */
  function page(name, properties, callOpts, segmentOpts) {
    if (isObject(name)) return page(null, name, properties);
    let category = null;
    if (typeof properties === 'string') {
      [category, name, properties, callOpts] = [name, properties, callOpts, segmentOpts];
    }
    for (const [v, what] of [[name, 'name'], [category, 'category']]) {
      if (v != null && typeof v !== 'string') throw new BadCall(`the page ${what} must be a string`);
    }
    const props = { ...jsonObject(properties, 'properties') };
    const co = callOptions(callOpts);
    if (typeof location !== 'undefined') {
      props.path = props.path ?? location.pathname;
      props.url = props.url ?? location.href;
    }
    const extra = { properties: props };
    if (name) extra.name = name;
    if (category) extra.category = category;
    return base('page', extra, co);
  }

  /** Report what happened after a decision: `completed` or `abandoned` (a step decision: sends
   * Step Completed / Step Abandoned for the chosen step with the decision id) or `converted`
   * (sends Onboarding Completed). */
  function reportOutcome(decisionId, outcome, properties) {
    if (typeof decisionId !== 'string' || !decisionId) throw new BadCall('a decision id is required');
    const extra = jsonObject(properties, 'properties');
    const entry = Object.entries(decisions).find(([, d]) => d.decisionId === decisionId);
    const stepId = entry ? entry[0] : extra.stepId;
    const props = { ...extra, decisionId };
    if (outcome === 'converted') return track('Onboarding Completed', props);
    if (outcome !== 'completed' && outcome !== 'abandoned') {
      throw new BadCall(`outcome must be completed, abandoned or converted, not ${outcome}`);
    }
    if (!stepId) throw new BadCall(`unknown decision ${decisionId}; pass properties.stepId`);
    return track(outcome === 'completed' ? 'Step Completed' : 'Step Abandoned', { ...props, stepId });
  }

  function reset() {
    userId = null;
    hash = { value: '', user: null }; // the signed-in user's: the next user brings their own
    groupId = null;
    session = null;
    anonymousId = uuid4(random);
    for (const k of Object.keys(decisions)) delete decisions[k];
    for (const n of ['userId', 'userHash', 'groupId', 'session', 'decisions']) {
      try {
        storage.removeItem(key(n));
      } catch {
        /* storage unavailable: the in-memory state is reset */
      }
    }
    save('anonymousId', anonymousId);
  }

  function on(kind, f) {
    if (!listeners[kind] || typeof f !== 'function') {
      warn(`onramp.on: unknown event ${kind} (error, sent or decision) or a listener that is not a function`);
      return () => {};
    }
    listeners[kind].push(f);
    return () => {
      const i = listeners[kind].indexOf(f);
      if (i >= 0) listeners[kind].splice(i, 1);
    };
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
    disabled: null,
    identify: guarded('identify', identify),
    alias: guarded('alias', alias),
    group: guarded('group', group),
    track: guarded('track', track),
    page: guarded('page', page),
    decide,
    reportOutcome: guarded('reportOutcome', reportOutcome),
    flush,
    reset() {
      try {
        reset();
      } catch (err) {
        report('reset', err);
      }
    },
    on,
    beaconFlush() {
      try {
        return beaconFlush();
      } catch (err) {
        emit('error', { kind: 'internal', error: err });
        return 0;
      }
    },
    close() {
      closed = true; // a send in flight finishes, and schedules nothing after it
      if (timer !== null) clearT(timer);
      timer = null;
      detachPage();
    },
    get anonymousId() {
      return currentAnonymousId();
    },
    get userId() {
      return userId;
    },
    get groupId() {
      return groupId;
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
const NOT_STARTED = 'call init({host, writeKey}) first';

/** Create the page-wide client (a second call replaces it). Never throws (see createClient). */
function init(options) {
  if (client) client.close();
  client = createClient(options);
  return client;
}

function pageWide(name) {
  return (...a) => {
    if (client) return client[name](...a);
    defaultWarn(`onramp.${name}: ${NOT_STARTED}`);
    return Promise.resolve({ ok: false, event: null, error: NOT_STARTED });
  };
}
const identify = pageWide('identify');
const alias = pageWide('alias');
const group = pageWide('group');
const track = pageWide('track');
const page = pageWide('page');
const reportOutcome = pageWide('reportOutcome');
const decide = (slot, opts) => {
  if (client) return client.decide(slot, opts);
  defaultWarn(`onramp.decide: ${NOT_STARTED}`);
  return Promise.resolve(fallbackDecision(slot, isObject(opts) ? opts.fallback ?? null : null, 'not_initialized'));
};
const flush = () => (client ? client.flush() : Promise.resolve(false));
const reset = () => (client ? client.reset() : undefined);
const on = (kind, f) => {
  if (client) return client.on(kind, f);
  defaultWarn(`onramp.on: ${NOT_STARTED}`);
  return () => {};
};

globalThis.Onramp = { VERSION, SEGMENT_ANONYMOUS_ID_KEY, uuid4, backoffMs, parseRetryAfter, classifyStatus, cookieValue, segmentAnonymousId, createClient, init, identify, alias, group, track, page, reportOutcome, decide, flush, reset, on };
})();
