// Entry point: bundle harness.js with Headlamp's modules, then run one
// scenario. Usage: node run.mjs <scenario> '<json options>'
// Each process bundles to its own file, so tests may run side by side.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import { build } from './build.mjs';

const outfile = await build(`harness-${process.pid}.cjs`);
try {
  createRequire(import.meta.url)(outfile);
} finally {
  fs.rmSync(outfile, { force: true });
}
