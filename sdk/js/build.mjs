// Builds onramp.iife.js (a <script> tag build exposing window.Onramp) from the ES module
// onramp.js, with no bundler: the module has no imports, so dropping `export` and wrapping it in a
// function is the whole build. `node build.mjs --check` exits 1 if the committed file is stale.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

export function buildIife(source) {
  const names = [];
  const body = source.replace(/^export (const|function|async function|let) ([A-Za-z_$][\w$]*)/gm, (_, kind, name) => {
    names.push(name);
    return `${kind} ${name}`;
  });
  if (/^export /m.test(body)) throw new Error('onramp.js: an export form build.mjs does not know');
  return (
    '// Generated from onramp.js by build.mjs: do not edit.\n' +
    '(function () {\n' +
    "'use strict';\n" +
    body +
    `\nglobalThis.Onramp = { ${names.join(', ')} };\n` +
    '})();\n'
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const out = buildIife(readFileSync(join(here, 'onramp.js'), 'utf8'));
  const target = join(here, 'onramp.iife.js');
  if (process.argv.includes('--check')) {
    const current = readFileSync(target, 'utf8');
    if (current !== out) {
      console.error('onramp.iife.js is stale: run `node sdk/js/build.mjs`');
      process.exit(1);
    }
  } else {
    writeFileSync(target, out);
    console.log(`wrote ${target}`);
  }
}
