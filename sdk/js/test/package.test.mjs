// package.json: what a bundler, node and a CDN get when they resolve @onramp/browser.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import vm from 'node:vm';

const dir = new URL('../', import.meta.url);
const pkg = JSON.parse(readFileSync(new URL('package.json', dir), 'utf8'));
const IIFE = 'onramp.iife.js';
const bare = (p) => String(p).replace(/^\.\//, '');

/** Every function and constant onramp.d.ts declares: what an import of the package must give. */
function declaredApi() {
  const dts = readFileSync(new URL('onramp.d.ts', dir), 'utf8');
  return [...dts.matchAll(/^export declare (?:function|const) ([A-Za-z_$][\w$]*)/gm)].map((m) => m[1]).sort();
}

test('package.json: bundler entry points (browser, module, main, exports ".") are the ES module with the whole API', async () => {
  const api = declaredApi();
  const root = pkg.exports['.'];
  const entries = {
    browser: pkg.browser,
    module: pkg.module,
    main: pkg.main,
    'exports["."].import': root.import,
    'exports["."].default': root.default,
    'exports["."].browser': root.browser,
  };
  for (const [field, file] of Object.entries(entries)) {
    if (file === undefined && field.endsWith('.browser')) continue;
    assert.equal(typeof file, 'string', `${field} is set`);
    assert.notEqual(bare(file), IIFE, `${field} points at the IIFE build, which exports nothing`);
    assert.ok(existsSync(new URL(bare(file), dir)), `${field}: ${file} exists`);
    const mod = await import(new URL(bare(file), dir));
    const missing = api.filter((name) => !(name in mod));
    assert.deepEqual(missing, [], `${field} (${file}) exports all of onramp.d.ts`);
  }
  for (const name of ['init', 'createClient', 'track', 'identify', 'page', 'group', 'alias', 'decide', 'reportOutcome', 'flush']) {
    assert.ok(api.includes(name), `onramp.d.ts declares ${name}`);
  }
  assert.equal(bare(root.types), bare(pkg.types));
  // node's own resolution of the package name (a package may import itself through "exports")
  const self = await import(pkg.name);
  assert.equal(typeof self.group, 'function');
  assert.equal(typeof self.init, 'function');
});

test('package.json: sideEffects keeps the IIFE (it sets window.Onramp), which stays reachable as ./iife and on CDNs', () => {
  const src = readFileSync(new URL(IIFE, dir), 'utf8');
  assert.match(src, /globalThis\.Onramp = /, 'the IIFE build has a side effect: it assigns a global');
  assert.ok(Array.isArray(pkg.sideEffects), `sideEffects must list the IIFE, not be ${JSON.stringify(pkg.sideEffects)}`);
  assert.ok(pkg.sideEffects.map(bare).includes(IIFE), 'sideEffects lists onramp.iife.js');
  assert.ok(!pkg.sideEffects.map(bare).includes('onramp.js'), 'the ES module has none: bundlers may tree-shake it');
  assert.equal(bare(pkg.exports['./iife']), IIFE);
  assert.equal(bare(pkg.unpkg), IIFE, 'a <script src="https://unpkg.com/@onramp/browser"> gets the IIFE');
  assert.equal(bare(pkg.jsdelivr), IIFE);
  for (const file of ['onramp.js', IIFE, 'onramp.d.ts']) assert.ok(pkg.files.includes(file), `files ships ${file}`);
  // importing the IIFE for its side effect sets the global (what a bundler must keep)
  const sandbox = { crypto: globalThis.crypto, setTimeout, clearTimeout, TextEncoder, Uint8Array };
  sandbox.globalThis = sandbox;
  vm.runInNewContext(src, sandbox);
  const missing = declaredApi().filter((name) => !(name in sandbox.Onramp));
  assert.deepEqual(missing, [], 'window.Onramp has all of onramp.d.ts');
});
