// What a page that already runs Segment's analytics.js expects of a Segment-compatible SDK:
// group(), the same anonymous id as analytics.js, and calls that never throw into the page.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as onramp from '../onramp.js';
import { client, cookieJar, memoryStorage } from './harness.mjs';

const sentEvents = (net) => net.requests.filter((r) => r.url.endsWith('/v1/batch')).flatMap((r) => r.json.batch);

// -- group ----------------------------------------------------------------------------------

test('group: a Segment group call (type, groupId, traits) in the batch the SDK posts', async () => {
  const storage = memoryStorage();
  const { c, timers, net } = client({ storage });
  c.identify('u1');
  const r = await c.group('acct-7', { name: 'Initech', plan: 'enterprise', employees: 120 }, { context: { ip: '0.0.0.0' } });
  assert.equal(r.ok, true);
  assert.equal(r.event.type, 'group');
  c.track('Invited Teammate');
  await timers.advance(1000);
  const [req] = net.requests;
  assert.equal(req.url, 'http://onramp.test/v1/batch');
  const [, g, t] = req.json.batch;
  assert.equal(g.type, 'group');
  assert.equal(g.groupId, 'acct-7');
  assert.deepEqual(g.traits, { name: 'Initech', plan: 'enterprise', employees: 120 });
  assert.deepEqual([g.userId, g.anonymousId], ['u1', c.anonymousId]);
  assert.equal(g.context.ip, '0.0.0.0');
  assert.equal(g.context.onramp.seq, 1);
  assert.equal(g.event, undefined);
  assert.equal(g.messageId, r.event.messageId, 'the result is the event that was sent');
  assert.equal(t.groupId, undefined, 'other calls stay as they were');
  assert.equal(c.groupId, 'acct-7');
  assert.equal(client({ storage }).c.groupId, 'acct-7', 'kept across a reload, as analytics.js keeps ajs_group_id');
});

test('group: group(traits) updates the current group; numeric ids are strings; reset forgets it', async () => {
  const { c, timers, net } = client();
  assert.equal((await c.group({ plan: 'x' })).ok, false, 'no group yet');
  await c.group(42);
  await c.group({ seats: 10 });
  await timers.advance(1000);
  const groups = sentEvents(net);
  assert.deepEqual(groups.map((e) => [e.groupId, e.traits]), [['42', {}], ['42', { seats: 10 }]]);
  c.reset();
  assert.equal(c.groupId, null);
});

test('group: the page-wide group() and window.Onramp.group', async () => {
  const net = [];
  const c = onramp.init({
    writeKey: 'wk', host: 'http://x', listenToPage: false, storage: memoryStorage(), cookie: () => '',
    fetch: async (url, init) => { net.push(JSON.parse(init.body)); return { status: 200, headers: { get: () => null } }; },
  });
  const r = await onramp.group('acct-1', { plan: 'team' });
  assert.deepEqual([r.ok, r.event.groupId], [true, 'acct-1']);
  await onramp.flush();
  assert.equal(net[0].batch[0].type, 'group');
  c.close();
});

// -- reusing analytics.js's anonymous id ----------------------------------------------------

test('anonymous id: reuses analytics.js\'s ajs_anonymous_id from localStorage (JSON-encoded)', async () => {
  const storage = memoryStorage({ ajs_anonymous_id: JSON.stringify('seg-anon-1') });
  const { c, timers, net } = client({ storage, options: { reuseSegmentAnonymousId: true } });
  assert.equal(c.anonymousId, 'seg-anon-1');
  c.track('Viewed');
  const d = c.decide('next_step', { fallback: 'role' });
  await timers.advance(1000);
  await d;
  assert.equal(sentEvents(net)[0].anonymousId, 'seg-anon-1');
  assert.equal(net.requests.find((r) => r.url.endsWith('/v1/decide')).json.anonymousId, 'seg-anon-1');
});

test('anonymous id: reuses the ajs_anonymous_id cookie (analytics-next raw, classic analytics.js JSON and URL-encoded)', () => {
  const raw = client({ options: { reuseSegmentAnonymousId: true, cookie: cookieJar({ other: '1', ajs_anonymous_id: 'seg-anon-2' }) } });
  assert.equal(raw.c.anonymousId, 'seg-anon-2');
  const classic = client({ options: { reuseSegmentAnonymousId: true, cookie: cookieJar({ ajs_anonymous_id: '%22seg-anon-3%22' }) } });
  assert.equal(classic.c.anonymousId, 'seg-anon-3');
  classic.c.track('A');
  assert.equal(classic.c.queuedEvents()[0].anonymousId, 'seg-anon-3');
  // localStorage first (analytics-next reads it before its cookie)
  const both = client({
    storage: memoryStorage({ ajs_anonymous_id: '"from-storage"' }),
    options: { reuseSegmentAnonymousId: true, cookie: cookieJar({ ajs_anonymous_id: 'from-cookie' }) },
  });
  assert.equal(both.c.anonymousId, 'from-storage');
  assert.equal(onramp.segmentAnonymousId({ storage: null, cookie: cookieJar({ ajs_anonymous_id: '%7B%7D' }) }), null, 'not an id');
});

test('anonymous id: an id analytics.js writes after init (first visit), or a new one after its reset(), is used from the next call', () => {
  const storage = memoryStorage();
  const jar = cookieJar();
  const { c } = client({ storage, options: { reuseSegmentAnonymousId: true, cookie: jar } });
  const own = c.anonymousId;
  c.track('Before Segment');
  jar.set('ajs_anonymous_id', 'seg-late');
  c.track('After Segment');
  storage.setItem('ajs_anonymous_id', '"seg-after-reset"');
  c.track('After Segment reset');
  assert.deepEqual(c.queuedEvents().map((e) => e.anonymousId), [own, 'seg-late', 'seg-after-reset']);
  assert.equal(JSON.parse(storage.getItem('onramp.anonymousId')), 'seg-after-reset', 'kept if Segment\'s storage is cleared');
});

test('anonymous id: off by default, an existing Segment id is left alone', () => {
  const storage = memoryStorage({ ajs_anonymous_id: '"seg-anon-1"' });
  const { c } = client({ storage, options: { cookie: cookieJar({ ajs_anonymous_id: 'seg-anon-1' }) } });
  assert.notEqual(c.anonymousId, 'seg-anon-1');
  assert.equal(c.anonymousId, JSON.parse(storage.getItem('onramp.anonymousId')));
});

// -- never throwing into the page -----------------------------------------------------------

test('bad calls never throw: each returns a promise that resolves {ok: false}, warns, reports, sends nothing', async () => {
  const { c, timers, net, warnings } = client();
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const circular = {};
  circular.self = circular;
  const bad = [
    ['track', () => c.track()],
    ['track', () => c.track('')],
    ['track', () => c.track({ event: 'x' })],
    ['track', () => c.track('A', 'not an object')],
    ['track', () => c.track('A', circular)],
    ['track', () => c.track('A', { n: 10n })],
    ['track', () => c.track('A', {}, 'options?')],
    ['identify', () => c.identify(['u1'])],
    ['identify', () => c.identify('u1', [1, 2])],
    ['page', () => c.page(7)],
    ['group', () => c.group()],
    ['group', () => c.group(['g'])],
    ['group', () => c.group('g', 'traits')],
    ['alias', () => c.alias()],
    ['reportOutcome', () => c.reportOutcome()],
    ['reportOutcome', () => c.reportOutcome('d-unknown', 'completed')],
    ['reportOutcome', () => c.reportOutcome('d-1', 'finished', { stepId: 'role' })],
  ];
  for (const [name, call] of bad) {
    let p;
    assert.doesNotThrow(() => {
      p = call();
    }, `${name} threw`);
    assert.ok(p instanceof Promise, `${name} returns a promise`);
    const r = await p;
    assert.equal(r.ok, false, `${name}: ${JSON.stringify(r)}`);
    assert.equal(r.event, null);
    assert.match(r.error, new RegExp(`^onramp\\.${name}: `));
  }
  assert.equal(warnings.length, bad.length, 'each refused call warned once');
  assert.deepEqual(errors.map((e) => e.kind), bad.map(() => 'invalid_call'));
  assert.equal(c.queued, 0, 'nothing queued');
  c.track('Fine');
  assert.equal(c.queuedEvents()[0].context.onramp.seq, 0, 'refused calls take no seq (no gap for the stream)');
  await timers.advance(1000);
  assert.deepEqual(sentEvents(net).map((e) => e.event), ['Fine']);
  assert.equal(c.on('nope', () => {})(), undefined, 'on() with an unknown kind warns, no throw');
});

test('good calls resolve {ok: true, event}; reportOutcome too', async () => {
  const { c } = client();
  for (const p of [c.identify('u1', { a: 1 }), c.track('A', null), c.page(), c.page({ title: 'x' }), c.alias('u2'), c.group('g1')]) {
    assert.ok(p instanceof Promise);
    const r = await p;
    assert.equal(r.ok, true, r.error);
    assert.match(r.event.messageId, /^[0-9a-f-]{36}$/);
    assert.equal(r.error, null);
  }
  const r = await c.reportOutcome('d-9', 'abandoned', { stepId: 'role' });
  assert.deepEqual([r.ok, r.event.event, r.event.properties.decisionId], [true, 'Step Abandoned', 'd-9']);
  const conv = await c.reportOutcome('d-9', 'converted');
  assert.equal(conv.event.event, 'Onboarding Completed');
  const seg = await c.page('Onboarding', 'Welcome', { step: 1 }, { stepId: 'welcome' });
  assert.deepEqual(
    [seg.event.category, seg.event.name, seg.event.properties.step, seg.event.context.onramp.stepId],
    ['Onboarding', 'Welcome', 1, 'welcome'],
    "Segment's page(category, name, properties, options)",
  );
  r.event.properties.decisionId = 'changed';
  assert.equal(c.queuedEvents().at(-3).properties.decisionId, 'd-9', 'the result is a copy');
});

test('decide never rejects, even for bad arguments; flush never rejects', async () => {
  const { c, warnings } = client({ answer: () => ({ status: 200, body: [] }) });
  for (const [args, reason] of [[[], 'invalid_call'], [[42], 'invalid_call'], [['next_step', 'role'], 'invalid_call'], [['next_step', null], 'http_200']]) {
    let p;
    assert.doesNotThrow(() => {
      p = c.decide(...args);
    });
    const d = await p;
    assert.equal(d.fallback, true);
    assert.equal(d.reason, reason, JSON.stringify(args));
  }
  assert.equal(warnings.length, 3);
  // a fetch that throws synchronously, and an answer whose json() throws
  const odd = client({ options: { fetch: () => { throw new Error('boom'); } } });
  odd.c.track('A');
  assert.equal(await odd.c.flush(), false, 'retry scheduled, no rejection');
  assert.equal((await odd.c.decide('next_step', { fallback: 'role' })).chosen, 'role');
});

test('no writeKey, or calls before init(): warnings and resolved promises, never a throw', async () => {
  const warned = [];
  let c;
  assert.doesNotThrow(() => {
    c = onramp.createClient({ host: 'http://x', warn: (m) => warned.push(m) });
  });
  assert.match(c.disabled, /writeKey/);
  assert.equal((await c.track('A')).ok, false);
  assert.equal((await c.decide('next_step', { fallback: 'role' })).chosen, 'role');
  assert.equal(await c.flush(), false);
  assert.match(warned[0], /writeKey/);
  // a fresh copy of the module, where init() was never called
  const fresh = await import('../onramp.js?never-initialized');
  const consoleWarn = console.warn;
  const logged = [];
  console.warn = (m) => logged.push(m);
  try {
    const pending = [fresh.track('A'), fresh.identify('u'), fresh.group('g'), fresh.alias('u'), fresh.page(), fresh.reportOutcome('d', 'completed')];
    for (const r of await Promise.all(pending)) assert.deepEqual([r.ok, r.error], [false, 'call init({host, writeKey}) first']);
    const d = await fresh.decide('next_step', { fallback: 'role' });
    assert.deepEqual([d.chosen, d.fallback, d.reason], ['role', true, 'not_initialized']);
    assert.equal(await fresh.flush(), false);
    assert.doesNotThrow(() => fresh.reset());
    assert.equal(typeof fresh.on('error', () => {}), 'function');
  } finally {
    console.warn = consoleWarn;
  }
  assert.equal(logged.length, 8);
  assert.match(logged[0], /^onramp\.track: call init/);
  const disabled = onramp.init({ warn: () => {} });
  assert.ok(disabled.disabled);
  assert.equal((await onramp.track('A')).ok, false);
  assert.equal((await onramp.reportOutcome('d', 'completed')).ok, false);
  disabled.close();
});
