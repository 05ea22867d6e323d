import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import vm from 'node:vm';

import { backoffMs, classifyStatus, parseRetryAfter, uuid4 } from '../onramp.js';
import { buildIife } from '../build.mjs';
import { client, fakeFetch, fakeTimers, memoryStorage, settle } from './harness.mjs';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const sentEvents = (net) => net.requests.filter((r) => r.url.endsWith('/v1/batch')).flatMap((r) => r.json.batch);

test('ids: v4 uuids, anonymousId persisted across clients, messageIds unique', () => {
  assert.match(uuid4(() => new Uint8Array(16).fill(255)), UUID);
  const storage = memoryStorage();
  const a = client({ storage });
  const b = client({ storage });
  assert.match(a.c.anonymousId, UUID);
  assert.equal(b.c.anonymousId, a.c.anonymousId, 'a reload keeps the anonymousId');
  for (let i = 0; i < 50; i++) a.c.track('Clicked');
  const ids = a.c.queuedEvents().map((e) => e.messageId);
  assert.equal(new Set(ids).size, 50);
  ids.forEach((id) => assert.match(id, UUID));
});

test('payloads are Segment calls with Onramp session context and a per-session seq', async () => {
  const { c, timers, net } = client();
  c.page('Welcome');
  c.identify('u1', { role: 'developer' });
  c.track('Step Viewed', { stepId: 'role' });
  await timers.advance(1000);
  const [req] = net.requests;
  assert.equal(req.url, 'http://onramp.test/v1/batch');
  assert.equal(req.headers['Content-Type'], 'text/plain');
  assert.equal(req.json.writeKey, 'wk');
  assert.equal(req.json.sentAt, new Date(timers.now()).toISOString());
  const [p, i, t] = req.json.batch;
  assert.deepEqual([p.type, i.type, t.type], ['page', 'identify', 'track']);
  assert.equal(p.name, 'Welcome');
  assert.equal(p.userId, undefined, 'anonymous before identify');
  assert.equal(i.userId, 'u1');
  assert.deepEqual(i.traits, { role: 'developer' });
  assert.equal(t.userId, 'u1');
  assert.equal(t.event, 'Step Viewed');
  for (const e of [p, i, t]) {
    assert.equal(e.anonymousId, c.anonymousId);
    assert.equal(e.context.onramp.sessionId, c.sessionId);
    assert.equal(e.context.library.name, 'onramp.js');
    assert.ok(!Number.isNaN(Date.parse(e.timestamp)));
  }
  assert.deepEqual([p, i, t].map((e) => e.context.onramp.seq), [0, 1, 2]);
  assert.equal(t.context.onramp.stepId, 'role');
});

test('identity: after identify every call carries userId and the same anonymousId, across a reload', async () => {
  const storage = memoryStorage();
  const { c, timers, net } = client({ storage });
  const anon = c.anonymousId;
  c.track('Before');
  c.identify('u1');
  c.track('After', { n: 1 });
  c.page('Home');
  await timers.advance(1000);
  const [before, i, t, p] = sentEvents(net);
  assert.equal(before.userId, undefined);
  assert.equal(c.anonymousId, anon, 'identify keeps the anonymousId');
  for (const e of [before, i, t, p]) assert.equal(e.anonymousId, anon);
  for (const e of [i, t, p]) assert.equal(e.userId, 'u1');
  const again = client({ storage });
  assert.deepEqual([again.c.userId, again.c.anonymousId], ['u1', anon], 'both kept in storage');
  again.c.track('Reloaded');
  const [r] = again.c.queuedEvents();
  assert.deepEqual([r.userId, r.anonymousId], ['u1', anon]);
});

test('alias: a Segment alias call; previousId defaults to the anonymousId before identify', async () => {
  const storage = memoryStorage();
  const { c, timers, net } = client({ storage });
  const anon = c.anonymousId;
  c.alias('u1', { context: { campaign: 'x' }, stepId: 'signup' });
  c.track('Signed Up');
  await timers.advance(1000);
  const [a, t] = sentEvents(net);
  assert.equal(a.type, 'alias');
  assert.equal(a.userId, 'u1');
  assert.equal(a.previousId, anon);
  assert.equal(a.anonymousId, anon);
  assert.match(a.messageId, UUID);
  assert.equal(a.context.campaign, 'x', 'options as the second argument');
  assert.equal(a.context.onramp.stepId, 'signup');
  assert.deepEqual([a.context.onramp.seq, t.context.onramp.seq], [0, 1]);
  assert.equal(a.event, undefined);
  assert.equal(a.traits, undefined);
  assert.deepEqual([t.userId, t.anonymousId], ['u1', anon], 'the new userId from then on');
  assert.equal(c.userId, 'u1');
  assert.equal(client({ storage }).c.userId, 'u1', 'persisted like identify');
});

test('alias: previousId defaults to the current userId, or is the one given', async () => {
  const storage = memoryStorage();
  const { c, timers, net } = client({ storage });
  c.identify('guest-7');
  c.alias('user-42');
  c.alias('user-43', 'legacy-1');
  c.alias(99, null);
  const d = c.decide('next_step', { fallback: 'role' });
  await timers.advance(1000);
  await d;
  const aliases = sentEvents(net).filter((e) => e.type === 'alias');
  assert.deepEqual(
    aliases.map((e) => [e.userId, e.previousId]),
    [['user-42', 'guest-7'], ['user-43', 'legacy-1'], ['99', 'user-43']],
  );
  assert.equal(c.userId, '99');
  assert.equal(JSON.parse(storage.getItem('onramp.userId')), '99');
  const req = net.requests.find((r) => r.url.endsWith('/v1/decide'));
  assert.equal(req.json.userId, '99', 'decide asks for the aliased user');
  for (const bad of [[''], [], [null, 'x']]) {
    const r = await c.alias(...bad);
    assert.equal(r.ok, false);
    assert.match(r.error, /user id is required/);
  }
  assert.equal(c.userId, '99', 'a refused alias changes nothing');
  c.reset();
  assert.equal(c.userId, null, 'reset forgets an aliased user too');
});

test('a new session starts after the inactivity timeout, seq restarts at 0', async () => {
  const { c, timers } = client({ options: { sessionTimeoutMs: 60_000, flushIntervalMs: 600_000 } });
  c.track('A');
  c.track('B');
  const first = c.sessionId;
  await timers.advance(61_000);
  c.track('C');
  const ev = c.queuedEvents().map((e) => e.context.onramp);
  assert.deepEqual(ev.map((x) => x.seq), [0, 1, 0]);
  assert.equal(ev[1].sessionId, first);
  assert.notEqual(ev[2].sessionId, first);
});

test('batching: flushAt events go at once, fewer wait for flushIntervalMs', async () => {
  const { c, timers, net } = client({ options: { flushAt: 5, flushIntervalMs: 2000 } });
  for (let i = 0; i < 3; i++) c.track('E', { i });
  await timers.advance(1999);
  assert.equal(net.requests.length, 0, 'under flushAt: wait for the time bound');
  await timers.advance(1);
  assert.deepEqual(net.requests.map((r) => r.json.batch.length), [3]);
  for (let i = 3; i < 15; i++) c.track('E', { i });
  await timers.advance(0);
  assert.deepEqual(net.requests.map((r) => r.json.batch.length), [3, 5, 5, 2], 'a full batch goes at once, with what follows it');
  assert.deepEqual(sentEvents(net).map((e) => e.properties.i), [...Array(15).keys()]);
  assert.equal(c.queued, 0);
});

test('batching: a batch stays under maxBatchBytes', async () => {
  const { c, timers, net } = client({ options: { flushAt: 100, maxBatchBytes: 4000 } });
  for (let i = 0; i < 10; i++) c.track('Big', { pad: 'x'.repeat(1000) });
  await timers.advance(1000);
  assert.ok(net.requests.length >= 3);
  for (const r of net.requests) assert.ok(r.body.length < 4000, `${r.body.length}`);
  assert.equal(sentEvents(net).length, 10);
});

test('retry: 503 and network errors back off exponentially and lose nothing', async () => {
  let n = 0;
  const { c, timers, net } = client({
    answer: () => {
      n += 1;
      if (n === 1) throw new TypeError('Failed to fetch');
      if (n <= 3) return { status: 503 };
      return { status: 200 };
    },
    options: { retryBaseMs: 1000, retryMaxMs: 60_000 },
  });
  c.track('A');
  c.track('B');
  await timers.advance(1000); // first attempt: network error
  assert.equal(net.requests.length, 1);
  const delays = [];
  for (let i = 0; i < 3; i++) {
    const [d] = timers.pending();
    delays.push(d);
    await timers.advance(d);
  }
  assert.equal(net.requests.length, 4);
  // full jitter within [exp/2, exp]: 1000, 2000, 4000
  assert.ok(delays[0] >= 500 && delays[0] <= 1000, `${delays}`);
  assert.ok(delays[1] >= 1000 && delays[1] <= 2000, `${delays}`);
  assert.ok(delays[2] >= 2000 && delays[2] <= 4000, `${delays}`);
  assert.equal(c.queued, 0);
  const ids = net.requests.map((r) => r.json.batch.map((e) => e.messageId).join());
  assert.equal(new Set(ids).size, 1, 'every retry resends the same events (same messageIds)');
  assert.equal(c.stats().sent, 2);
});

test('retry: 429 honours Retry-After', async () => {
  let n = 0;
  const { c, timers, net } = client({
    answer: () => (++n === 1 ? { status: 429, headers: { 'Retry-After': '7' } } : { status: 200 }),
    options: { retryBaseMs: 100 },
  });
  c.track('A');
  await timers.advance(1000);
  assert.deepEqual(timers.pending(), [7000]);
  await timers.advance(6999);
  assert.equal(net.requests.length, 1);
  await timers.advance(1);
  assert.equal(net.requests.length, 2);
  assert.equal(c.queued, 0);
});

test('retry: 400 and 401 are not retried (the collector kept the valid events)', async () => {
  const errors = [];
  const { c, timers, net } = client({ answer: () => ({ status: 400, body: { rejected: [{ reason: 'x' }] } }) });
  c.on('error', (e) => errors.push(e));
  c.track('A');
  await timers.advance(1000);
  await timers.advance(60_000);
  assert.equal(net.requests.length, 1);
  assert.equal(c.queued, 0);
  assert.equal(errors[0].kind, 'rejected');
  assert.equal(errors[0].status, 400);
});

test('status classes, Retry-After parsing and the backoff cap', () => {
  assert.deepEqual([200, 400, 401, 408, 413, 429, 500, 503].map(classifyStatus), [
    'done', 'drop', 'drop', 'retry', 'drop', 'retry', 'retry', 'retry',
  ]);
  assert.equal(parseRetryAfter('5'), 5);
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4_000), 6);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter('soon'), null);
  assert.equal(backoffMs(30, { baseMs: 500, maxMs: 30_000, jitter: () => 1 }), 30_000);
  assert.equal(backoffMs(1, { baseMs: 500, maxMs: 30_000, jitter: () => 0 }), 250);
  assert.equal(backoffMs(1, { baseMs: 500, maxMs: 30_000, retryAfterS: 9, jitter: () => 0 }), 9000);
});

test('offline queue: bounded, survives a reload, flushed by the next page', async () => {
  const storage = memoryStorage();
  const down = client({ storage, answer: () => { throw new TypeError('offline'); }, options: { maxQueueSize: 10 } });
  for (let i = 0; i < 14; i++) down.c.track('E', { i });
  assert.equal(down.c.queued, 10, 'bounded');
  assert.equal(down.c.stats().dropped, 4);
  assert.deepEqual(down.c.queuedEvents().map((e) => e.properties.i), [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], 'the oldest are dropped');
  await down.timers.advance(1000);
  const kept = down.c.queuedEvents().map((e) => e.messageId);
  down.c.close();
  // "reload": a new client on the same storage, the collector is back
  const up = client({ storage });
  assert.equal(up.c.queued, 10);
  await up.timers.advance(0);
  assert.deepEqual(sentEvents(up.net).map((e) => e.messageId), kept);
  assert.equal(up.c.queued, 0);
  assert.equal(JSON.parse(storage.getItem('onramp.queue')).length, 0);
  up.c.track('After');
  assert.equal(up.c.queuedEvents()[0].context.onramp.seq, 14, 'seq continues across the reload');
});

test('sendBeacon on page hide when the collector is reachable, not during an outage', async () => {
  const beacons = [];
  const sendBeacon = (url, data) => {
    beacons.push({ url, data });
    return true;
  };
  const { c } = client({ options: { sendBeacon, flushIntervalMs: 60_000 } });
  c.track('A');
  c.track('B');
  assert.equal(c.beaconFlush(), 2);
  assert.equal(beacons[0].url, 'http://onramp.test/v1/batch');
  assert.equal(beacons[0].data.type, 'text/plain', 'a simple CORS request');
  const data = JSON.parse(await beacons[0].data.text());
  assert.equal(data.writeKey, 'wk');
  assert.equal(data.batch.length, 2);
  assert.equal(c.queued, 0);

  const down = client({ answer: () => { throw new TypeError('offline'); }, options: { sendBeacon } });
  down.c.track('A');
  await down.timers.advance(1000);
  assert.equal(down.c.beaconFlush(), 0, 'kept in storage for the next page load instead');
  assert.equal(down.c.queued, 1);
});

test('decide: sends the userHash of the signed-in user, never an anonymous one, and reset() drops it', async () => {
  const answer = { decisionId: 'd-2', slot: 'next_step', chosen: 'goals', ranked: [] };
  const { c, net } = client({
    answer: () => ({ status: 200, body: answer }),
    options: { userHash: 'h-of-u9' },
  });
  const sent = () => net.requests.filter((r) => r.url.endsWith('/v1/decide')).map((r) => r.json);
  await c.decide('next_step');
  c.identify('u9');
  await c.decide('next_step');
  await c.decide('next_step', { userHash: 'h-per-call' });
  c.reset();
  c.identify('u10');
  await c.decide('next_step');
  c.identify('u11', {}, { userHash: 'h-of-u11' }); // signed in later: the hash comes with it
  await c.decide('next_step');
  c.identify('u12'); // another user: u11's hash is not theirs
  await c.decide('next_step');
  assert.deepEqual(
    sent().map((j) => [j.userId ?? null, j.userHash ?? null]),
    [[null, null], ['u9', 'h-of-u9'], ['u9', 'h-per-call'], ['u10', null], ['u11', 'h-of-u11'], ['u12', null]],
  );
  const identified = net.requests.flatMap((r) => (r.json && r.json.batch) || []).filter((e) => e.type === 'identify');
  assert.ok(identified.every((e) => !('userHash' in e) && !JSON.stringify(e).includes('h-of-u11')));
});

test('decide: the userHash is kept with its user across page loads, and a hash from init is the next user\'s', async () => {
  const answer = { decisionId: 'd-3', slot: 'next_step', chosen: 'goals', ranked: [] };
  const storage = memoryStorage();
  const page = (options = {}) => client({ answer: () => ({ status: 200, body: answer }), storage, options });
  const first = page();
  first.c.identify('u11', {}, { userHash: 'h-of-u11' });
  // the next page load: the user id came back from storage, and the hash used to stay behind
  // (every decide() of a signed-in user was 403 until identify() was called with it again)
  const second = page();
  await second.c.decide('next_step');
  // alice signed out without reset(); the page rendered for bob gives bob's hash to init(),
  // which used to be dropped as "another user's" when bob was identified
  const third = page({ userHash: 'h-of-bob' });
  third.c.identify('bob');
  await third.c.decide('next_step');
  const fourth = page();
  await fourth.c.decide('next_step');
  fourth.c.reset();
  const fifth = page();
  fifth.c.identify('u11');
  await fifth.c.decide('next_step');
  const asked = [second, third, fourth, fifth].flatMap(({ net }) =>
    net.requests.filter((r) => r.url.endsWith('/v1/decide')).map((r) => [r.json.userId, r.json.userHash ?? null]),
  );
  assert.deepEqual(asked, [['u11', 'h-of-u11'], ['bob', 'h-of-bob'], ['bob', 'h-of-bob'], ['u11', null]]);
});

test('decide: answer, decision id echoed on the step events that follow', async () => {
  const answer = { decisionId: 'd-1', slot: 'next_step', chosen: 'goals', ranked: [{ action: 'goals' }], arm: 'treatment' };
  const { c, timers, net } = client({
    answer: (req) => (req.url.endsWith('/v1/decide') ? { status: 200, body: answer } : { status: 200 }),
  });
  c.identify('u9');
  const d = await c.decide('next_step', { candidates: ['goals', 'role'], context: { device: 'web' }, fallback: 'role' });
  assert.equal(d.chosen, 'goals');
  assert.equal(d.fallback, false);
  const req = net.requests.find((r) => r.url.endsWith('/v1/decide'));
  assert.equal(req.headers.Authorization, 'Bearer rk');
  assert.deepEqual(req.json, { slot: 'next_step', userId: 'u9', candidates: ['goals', 'role'], context: { device: 'web' } });
  c.track('Step Viewed', { stepId: 'goals' });
  c.track('Step Completed', { stepId: 'goals' });
  c.track('Step Viewed', { stepId: 'role' });
  c.reportOutcome('d-1', 'completed');
  await timers.advance(1000);
  const ev = sentEvents(net).filter((e) => e.type === 'track');
  assert.deepEqual(ev.map((e) => e.properties.decisionId ?? null), ['d-1', 'd-1', null, 'd-1']);
  assert.equal(ev[3].event, 'Step Completed');
  assert.equal(ev[3].context.onramp.stepId, 'goals');
});

test('decide: a slow Onramp gives the fallback within the timeout', async () => {
  const timers = fakeTimers();
  const net = fakeFetch((req) => new Promise((resolve) => timers.setTimeout(() => resolve({ status: 200, body: { chosen: 'late' } }), 5000)));
  const { c } = client({ timers, net });
  const p = c.decide('next_step', { timeoutMs: 300, fallback: 'role' });
  await timers.advance(300);
  const d = await p;
  assert.deepEqual([d.chosen, d.fallback, d.reason, d.decisionId], ['role', true, 'timeout', null]);
  assert.equal(d.latencyMs, 300);
});

test('decide: errors and a missing read key give the fallback, never a rejection', async () => {
  const { c } = client({ answer: () => ({ status: 422, body: { error: 'ineligible_candidates' } }) });
  const d = await c.decide('next_step', { fallback: 'role' });
  assert.deepEqual([d.chosen, d.reason], ['role', 'http_422']);
  const down = client({ answer: () => { throw new TypeError('down'); } });
  assert.equal((await down.c.decide('x', { fallback: 'y' })).reason, 'network');
  const nokey = client({ options: { decideKey: '' } });
  assert.equal((await nokey.c.decide('x', { fallback: 'y' })).reason, 'no_decide_key');
  // the pre-scope option name still works
  const legacy = client({ options: { decideKey: '', readKey: 'old' } });
  assert.notEqual((await legacy.c.decide('x', { fallback: 'y' })).reason, 'no_decide_key');
});

test('the IIFE build is up to date and exposes window.Onramp', () => {
  const src = readFileSync(new URL('../onramp.js', import.meta.url), 'utf8');
  const built = readFileSync(new URL('../onramp.iife.js', import.meta.url), 'utf8');
  assert.equal(built, buildIife(src), 'run `node sdk/js/build.mjs`');
  const sandbox = { setTimeout, clearTimeout, crypto: globalThis.crypto, Date, JSON, Math, Map, Set, Promise, TextEncoder, Uint8Array };
  sandbox.globalThis = sandbox;
  vm.runInNewContext(built, sandbox);
  assert.equal(sandbox.Onramp.VERSION, JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version);
  const c = sandbox.Onramp.init({ writeKey: 'k', host: 'http://x', listenToPage: false, fetch: async () => ({ status: 200 }) });
  sandbox.Onramp.track('A');
  sandbox.Onramp.alias('u1');
  assert.equal(c.queued, 2);
  assert.equal(c.userId, 'u1');
  c.close();
});

test('backing off: new events wait for the retry, a full queue does not start a storm', async () => {
  const { c, timers, net } = client({ answer: () => ({ status: 429, headers: { 'Retry-After': '60' } }) });
  for (let i = 0; i < 20; i++) c.track('E', { i });
  await timers.advance(10);
  assert.equal(net.requests.length, 1);
  for (let i = 0; i < 30; i++) {
    c.track('More', { i }); // past flushAt: used to send at once, every event
    await timers.advance(100);
  }
  assert.equal(net.requests.length, 1, 'Retry-After: 60 s is kept');
  await timers.advance(60_000);
  assert.ok(net.requests.length >= 2, 'and the retry comes');
});

test('two tabs share the queue and the session: nothing overwritten, no seq taken twice', async () => {
  const storage = memoryStorage();
  const timers = fakeTimers();
  const offline = () => { throw new TypeError('offline'); };
  const a = client({ storage, timers, answer: offline });
  const b = client({ storage, timers, answer: offline });
  a.c.track('A1');
  b.c.track('B1');
  a.c.track('A2');
  b.c.track('B2');
  const events = new Map([...a.c.queuedEvents(), ...b.c.queuedEvents()].map((e) => [e.messageId, e]));
  const seqs = [...events.values()].map((e) => e.context.onramp.seq).sort();
  assert.deepEqual(seqs, [0, 1, 2, 3], 'each call its own seq of the shared session');
  b.c.close(); // tab B closes during the outage: its events stay in storage
  a.c.track('A3'); // tab A writes the queue again: B's events are kept
  const stored = JSON.parse(storage.getItem('onramp.queue')).map((e) => e.event).sort();
  assert.deepEqual(stored, ['A1', 'A2', 'A3', 'B1', 'B2']);
  a.c.close();
});

test('garbage another version left in storage is not a crash: decisions, queue, session', async () => {
  const storage = memoryStorage();
  storage.setItem('onramp.decisions', JSON.stringify(null));
  storage.setItem('onramp.queue', JSON.stringify([null, 7, { messageId: 'm-old', type: 'track', event: 'Old' }]));
  storage.setItem('onramp.session', JSON.stringify({ id: 'sess-old' })); // no seq
  const { c, timers, net } = client({ storage });
  const viewed = await c.track('Step Viewed', { stepId: 'team_size' });
  assert.ok(viewed.ok, viewed.error);
  assert.equal(viewed.event.context.onramp.seq, 0, 'a session without seq is a new one, seq 0 (not null)');
  await timers.advance(1000);
  assert.deepEqual(sentEvents(net).map((e) => e.messageId ?? null).length, 2);
  assert.equal(c.queued, 0, 'the queue drains: no null entry stalls it');
  c.reset(); // logout works on a garbage decisions map
  assert.equal(storage.getItem('onramp.userId'), null);
});

test('an event the collector would refuse for its size is refused at the call', async () => {
  const { c } = client();
  const r = await c.track('Big', { blob: 'x'.repeat(40 * 1024) });
  assert.equal(r.ok, false);
  assert.match(String(r.error), /refuses events over 32768/);
  assert.equal(c.queued, 0);
});

test('closing the page while a send is in flight beacons the queue, and small sends use keepalive', async () => {
  const beacons = [];
  let release;
  const storage = memoryStorage();
  const { c, timers, net } = client({
    storage,
    answer: () => new Promise((resolve) => { release = () => resolve({ status: 200, body: { success: true } }); }),
    options: { sendBeacon: (url, data) => { beacons.push(data); return true; } },
  });
  for (let i = 0; i < 8; i++) c.track('E', { i });
  await timers.advance(1000);
  assert.equal(net.requests.length, 1);
  assert.equal(net.requests[0].keepalive, true, 'a small batch survives the page');
  assert.equal(c.beaconFlush(), 8, 'the in-flight events again (one messageId each)');
  const beaconed = (await Promise.all(beacons.map((b) => b.text()))).flatMap((t) => JSON.parse(t).batch);
  assert.deepEqual(beaconed.map((e) => e.messageId).sort(), net.requests[0].json.batch.map((e) => e.messageId).sort());
  release();
  await settle();
  assert.equal(c.queued, 0);
});

test('storage that reads but refuses writes (quota): the session seq still advances', async () => {
  const storage = memoryStorage();
  const { c } = client({ storage });
  await c.track('First');
  storage.setItem = () => { throw new Error('QuotaExceededError'); };
  for (let i = 0; i < 4; i++) await c.track('Next', { i });
  const seqs = c.queuedEvents().map((e) => e.context.onramp.seq);
  assert.deepEqual(seqs, [0, 1, 2, 3, 4]);
});

test('two open tabs each send their own events, not copies of the other tab\'s', async () => {
  const storage = memoryStorage();
  const timers = fakeTimers();
  const net = fakeFetch();
  const a = client({ storage, timers, net });
  const b = client({ storage, timers, net });
  for (let i = 0; i < 5; i++) {
    a.c.track('A', { i });
    b.c.track('B', { i });
  }
  await timers.advance(1000);
  const ids = sentEvents(net).map((e) => e.messageId);
  assert.equal(ids.length, 10, 'each event once');
  assert.equal(new Set(ids).size, 10);
  assert.deepEqual(JSON.parse(storage.getItem('onramp.queue')), []);
});

test('the size check counts what the SDK adds (the page) too', async () => {
  const { c } = client();
  const had = globalThis.location;
  globalThis.location = { pathname: '/', href: `https://app.test/?${'q'.repeat(2500)}`, search: '' };
  try {
    // 30,000 bytes of the caller's: under the limit alone, over it with the page's URL
    const r = await c.track('Big', { note: 'x'.repeat(30000) });
    assert.equal(r.ok, false);
    assert.match(String(r.error), /refuses events over 32768/);
    const ok = await c.track('Fine', { note: 'x'.repeat(1000) });
    assert.ok(ok.ok, ok.error);
    assert.equal(ok.event.context.onramp.seq, 0, 'the refused call took no seq');
  } finally {
    if (had === undefined) delete globalThis.location;
    else globalThis.location = had;
  }
});

test('a page that starts with a stored backlog beacons nothing until the collector answered it', async () => {
  const storage = memoryStorage();
  const down = client({ storage, answer: () => ({ status: 503 }), options: { retryBaseMs: 60_000 } });
  for (let i = 0; i < 5; i++) down.c.track('E', { i });
  await down.timers.advance(1000);
  down.c.close();
  assert.equal(JSON.parse(storage.getItem('onramp.queue')).length, 5);
  // the next page: its first send hangs (the outage answers slowly), the user leaves
  const beacons = [];
  let release;
  const next = client({
    storage,
    answer: () => new Promise((resolve) => { release = () => resolve({ status: 503 }); }),
    options: { sendBeacon: (url, data) => { beacons.push(data); return true; } },
  });
  await next.timers.advance(0);
  assert.equal(next.net.requests.length, 1);
  assert.equal(next.c.beaconFlush(), 0, 'a beacon to a collector that never answered this page');
  assert.equal(beacons.length, 0);
  assert.equal(JSON.parse(storage.getItem('onramp.queue')).length, 5, 'kept for the next page');
  release();
  await settle();
  // once a send is acknowledged, page hides beacon again
  const ok = client({ storage, options: { sendBeacon: (url, data) => { beacons.push(data); return true; } } });
  await ok.timers.advance(0);
  assert.equal(ok.c.queued, 0);
  ok.c.track('Later');
  assert.equal(ok.c.beaconFlush(), 1);
});

test('a call takes a copy: the page changing its object later changes nothing queued, stalls nothing', async () => {
  const { c, timers, net } = client({ options: { flushIntervalMs: 1000 } });
  const props = { form: { field: 'email' } };
  const ctx = { campaign: { name: 'spring' } };
  await c.track('Form Error', props, { context: ctx });
  props.form.field = 'CHANGED';
  props.form.self = props; // unserializable from here on
  ctx.campaign.name = 'CHANGED';
  await c.track('Next');
  await timers.advance(1000);
  const sent = sentEvents(net);
  assert.equal(sent.length, 2, 'both sent: the mutation did not stall the queue');
  assert.deepEqual(sent[0].properties.form, { field: 'email' });
  assert.equal(sent[0].context.campaign.name, 'spring');
});

test('ids and names the collector would refuse are refused at the call, and never stored', async () => {
  const storage = memoryStorage();
  const { c, timers, net } = client({ storage });
  const long = 'auth0|' + 'x'.repeat(300);
  assert.equal((await c.identify(long)).ok, false);
  assert.equal(c.userId, null);
  assert.equal(storage.getItem('onramp.userId'), null);
  assert.equal((await c.track('E'.repeat(257))).ok, false);
  assert.equal((await c.track('Step Viewed', { stepId: 's'.repeat(257) })).ok, false);
  assert.equal((await c.identify('x'.repeat(256))).ok, true, '256 characters is the limit');
  await timers.advance(1000);
  assert.equal(sentEvents(net).length, 1);
  // an id another version (or anything else) left in storage that the collector would refuse
  const bad = memoryStorage({ 'onramp.userId': JSON.stringify('y'.repeat(300)), 'onramp.groupId': 'true' });
  const again = client({ storage: bad });
  assert.equal(again.c.userId, null);
  assert.equal(again.c.groupId, null);
});

test('a 413 that accepted nothing splits the batch instead of dropping it', async () => {
  const errors = [];
  const { c, timers, net } = client({
    // the operator set collector.max_batch_events to 3
    answer: (req) => (req.json.batch.length > 3
      ? { status: 413, body: { success: false, accepted: 0, rejected: [{ reason: 'too_many_events' }] } }
      : { status: 200, body: { success: true, accepted: req.json.batch.length } }),
    options: { flushAt: 10 },
  });
  c.on('error', (e) => errors.push(e));
  for (let i = 0; i < 10; i++) c.track('E', { i });
  await timers.advance(1000);
  assert.deepEqual(sentEvents(net).filter((e, k, all) => all.findIndex((x) => x.messageId === e.messageId) === k).map((e) => e.properties.i),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(c.queued, 0);
  assert.equal(c.stats().sent, 10);
  assert.equal(c.stats().dropped, 0);
  assert.ok(errors.every((e) => e.kind === 'split'));
  // one oversized event among many: split down to it, dropped, then batches grow back
  const big = client({
    answer: (req) => (req.json.batch.some((e) => e.event === 'Huge')
      ? { status: 413, body: 'Request Entity Too Large' }
      : { status: 200, body: { success: true } }),
    options: { flushAt: 8 },
  });
  for (let i = 0; i < 8; i++) big.c.track(i === 5 ? 'Huge' : 'E', { i });
  await big.timers.advance(1000);
  assert.equal(big.c.queued, 0);
  assert.equal(big.c.stats().dropped, 1);
  for (let i = 0; i < 8; i++) big.c.track('Later', { i });
  await big.timers.advance(1000);
  for (let i = 0; i < 8; i++) big.c.track('Later2', { i });
  await big.timers.advance(1000);
  const last = big.net.requests[big.net.requests.length - 1].json.batch;
  assert.equal(last.length, 8, 'back to flushAt a batch');
  // a single event refused as too large is still dropped (it will never fit)
  const one = client({ answer: () => ({ status: 413, body: { accepted: 0 } }) });
  one.c.track('Big');
  await one.timers.advance(1000);
  assert.equal(one.c.queued, 0);
  assert.equal(one.c.stats().dropped, 1);
});

test('close() and a second init stop the old client: a send in flight schedules no retry', async () => {
  let release;
  const { c, timers, net } = client({
    answer: () => new Promise((resolve) => { release = () => resolve({ status: 503 }); }),
  });
  c.track('A');
  await timers.advance(1000);
  assert.equal(net.requests.length, 1);
  c.close();
  release();
  await settle();
  assert.deepEqual(timers.pending(), [], 'no retry timer after close');
  await timers.advance(600_000);
  assert.equal(net.requests.length, 1);
  assert.equal(await c.flush(), false);
});
