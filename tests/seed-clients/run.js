// Runs the seed contracts' own client code against a running kubemux.
//
//   node run.js <scenario> <seeds dir> '<JSON settings>'
//
// The seeds are read at run time and only the code blocks they contain
// are evaluated, unchanged: nothing of theirs is copied into this
// repository. What this file adds is the browser around them (a global
// `WebSocket` that is the `ws` package, `window`, `setTimeout`, `console`,
// `fetch` relative to the page) and the observations a test needs.
//
// stdout carries one JSON object per line, for tests/it/seed_clients.rs:
//   {"step": "..."}        progress, for the test's failure messages
//   {"await": "restart"}   the test restarts kubemux on the same port now
//   {"ok": true|false, ...} the result, last
// The seeds' own console output goes to stderr.
'use strict';

const fs = require('fs');
const path = require('path');
const vm = require('vm');
const ts = require('typescript');
const WS = require('ws');

const [scenario, seedsDir, settingsJson] = process.argv.slice(2);
const settings = JSON.parse(settingsJson || '{}');
/** Upper bound for anything awaited; a hang becomes a result, not a stuck test. */
const PATIENCE_MS = settings.patienceMs || 30000;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(error) {
  emit({ ok: false, scenario, error: String(error && error.stack ? error.stack : error) });
  process.exit(1);
}

// ---- reading the seeds -------------------------------------------------

/** The seed file whose name starts with `prefix` (e.g. "003_"). */
function seed(prefix) {
  const names = fs.readdirSync(seedsDir).filter((n) => n.startsWith(prefix) && n.endsWith('.txt'));
  if (names.length !== 1) throw new Error(`expected one ${prefix}*.txt in ${seedsDir}, found ${names.length}`);
  return fs.readFileSync(path.join(seedsDir, names[0]), 'utf8');
}

/** Every fenced block: its language tag (first word after the fence) and body. */
function blocks(text) {
  const out = [];
  const fence = /^```([^\n`]*)\n([\s\S]*?)^```[ \t]*$/gm;
  let m;
  while ((m = fence.exec(text)) !== null) {
    out.push({ lang: (m[1].trim().split(/\s+/)[0] || '').toLowerCase(), body: m[2], at: m.index });
  }
  return out;
}

/** The one block in `lang` whose body matches `test`. */
function block(text, langs, test, what) {
  const found = blocks(text).filter((b) => langs.includes(b.lang) && test(b.body));
  if (found.length !== 1) throw new Error(`expected one ${langs.join('/')} block with ${what}, found ${found.length}`);
  return found[0];
}

/** The text of the section under the Markdown heading matching `title`. */
function section(text, title) {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => /^#+\s/.test(l) && title.test(l));
  if (start < 0) throw new Error(`no section ${title}`);
  const level = lines[start].match(/^#+/)[0].length;
  const rest = lines.slice(start + 1);
  const end = rest.findIndex((l) => {
    const h = l.match(/^(#+)\s/);
    return h && h[1].length <= level;
  });
  return rest.slice(0, end < 0 ? rest.length : end).join('\n');
}

/** The seed's example messages (JSON blocks with a string `type`), by type. */
function examples(text) {
  const out = {};
  for (const b of blocks(text)) {
    if (b.lang !== 'json') continue;
    try {
      const m = JSON.parse(b.body.replace(/\/\/[^\n]*/g, ''));
      // An error's `details` are particular to its code, not its shape.
      if (m && m.type === 'error' && m.error) delete m.error.details;
      if (m && typeof m.type === 'string') (out[m.type] = out[m.type] || []).push(m);
    } catch (e) {
      // A block that is not a message (a fragment, a table) is no example.
    }
  }
  return out;
}

/** Paths of `example`'s fields that `actual` lacks (objects compared key by key). */
function missing(example, actual, at = '') {
  if (!example || typeof example !== 'object' || Array.isArray(example)) return [];
  const out = [];
  for (const [key, value] of Object.entries(example)) {
    const here = at ? `${at}.${key}` : key;
    if (!actual || typeof actual !== 'object' || !(key in actual)) out.push(here);
    else out.push(...missing(value, actual[key], here));
  }
  return out;
}

/**
 * For each message type kubemux sent that the seed shows an example of,
 * the example's fields kubemux's message lacks (against the closest
 * example, e.g. the successful or the failed `auth_result`).
 */
function shapes(text, received) {
  const byType = examples(text);
  const out = {};
  for (const m of received) {
    const candidates = byType[m.type];
    if (!candidates || m.type in out) continue;
    const gaps = candidates.map((e) => missing(e, m)).sort((a, b) => a.length - b.length)[0];
    out[m.type] = gaps;
  }
  return out;
}

// ---- the browser around the seed code ------------------------------------

/** Every socket the seed code opened, in order. */
const sockets = [];

/**
 * The global `WebSocket`: the `ws` package, with the seed's host (its
 * documentation's `localhost:3001`, `api.hexabase.ai`, …) replaced by the
 * test's listener; the path and query stay the seed's own. Like a browser,
 * a failed connection is reported through `onerror`/`onclose`, never thrown.
 */
class WebSocket extends WS {
  constructor(url, protocols) {
    const target = new URL(settings.target);
    const mapped = new URL(url);
    mapped.protocol = target.protocol;
    mapped.host = target.host;
    super(mapped.toString(), protocols);
    this.on('error', () => {});
    this.on('close', (code) => {
      this.closeCode = code;
    });
    this.seedUrl = String(url);
    this.received = [];
    this.on('message', (data, isBinary) => {
      if (isBinary) return;
      try {
        this.received.push(JSON.parse(data.toString()));
      } catch (e) {
        this.received.push({ unparsable: data.toString() });
      }
    });
    sockets.push(this);
  }
}

function seedConsole() {
  const out = (...args) => process.stderr.write(`[seed] ${args.map(String).join(' ')}\n`);
  return { log: out, info: out, warn: out, error: out, debug: out };
}

/** A fresh global for seed code, as a page would give it. */
function browser(extra) {
  const fetched = [];
  const context = {
    WebSocket,
    setTimeout,
    clearTimeout,
    console: seedConsole(),
    // A page's fetch resolves relative URLs against the page's origin.
    fetch: async (url, options) => {
      const response = await fetch(new URL(url, settings.http), options);
      fetched.push({ url: String(url), status: response.status });
      return response;
    },
    ...extra,
  };
  context.window = context;
  vm.createContext(context);
  return { context, fetched };
}

function run(context, code, name) {
  return vm.runInContext(code, context, { filename: name });
}

// ---- waiting --------------------------------------------------------------

function within(ms, what, promise) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`gave up waiting for: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Resolves once `test()` returns something truthy (checked on every message). */
function until(what, test) {
  return within(PATIENCE_MS, what, new Promise((resolve) => {
    const check = () => {
      const v = test();
      if (v) {
        clearInterval(poll);
        resolve(v);
      }
    };
    const poll = setInterval(check, 20);
    check();
  }));
}

// ---- scenarios ------------------------------------------------------------

/** Seed 003: the `HexabaseWebSocket` class, its promise-based subscribe. */
async function subscriptions() {
  const source = seed('003_');
  const code = block(source, ['typescript', 'ts'], (b) => b.includes('class HexabaseWebSocket'), 'class HexabaseWebSocket').body;
  const file = ts.createSourceFile('seed003.ts', code, ts.ScriptTarget.ES2020, true);
  let classText = null;
  const usage = { subscribe: null, on: [] };
  const visit = (node) => {
    if (ts.isClassDeclaration(node) && node.name && node.name.text === 'HexabaseWebSocket') {
      classText = node.getText(file);
      return;
    }
    if (ts.isCallExpression(node) && ts.isPropertyAccessExpression(node.expression)) {
      const method = node.expression.name.text;
      const args = node.arguments;
      if (method === 'subscribe' && args.length === 3 && ts.isArrayLiteralExpression(args[2])) {
        usage.subscribe = { resource: args[0].text, events: args[2].elements.map((e) => e.text) };
      } else if (method === 'on' && args.length >= 1 && ts.isStringLiteral(args[0])) {
        usage.on.push(args[0].text);
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  if (!classText) throw new Error('class HexabaseWebSocket not found in its block');
  if (!usage.subscribe) throw new Error("the block's usage example has no subscribe(resource, id, events) call");
  // Only the class is evaluated: the usage below it connects with the
  // placeholder 'your-jwt-token'; its resource, events and handler names
  // are used with the test's token and workspace instead.
  const js = ts.transpileModule(classText, {
    compilerOptions: { target: ts.ScriptTarget.ES2020, module: ts.ModuleKind.None },
  }).outputText;
  const { context } = browser({});
  const HexabaseWebSocket = run(context, `${js}\nHexabaseWebSocket;`, 'seed003.js');
  emit({ step: 'class extracted', usage });

  const authenticated = async (token) => {
    const before = sockets.length;
    const client = new HexabaseWebSocket(token);
    const sock = await until('the class to open its socket', () => sockets[before]);
    const auth = await until('auth_result', () => sock.received.find((m) => m.type === 'auth_result'));
    return { client, sock, auth };
  };

  const alice = await authenticated(settings.token);
  if (alice.auth.success !== true) throw new Error(`auth failed: ${JSON.stringify(alice.auth)}`);
  emit({ step: 'authenticated', user_id: alice.auth.user_id, url: alice.sock.seedUrl });

  const fired = {};
  for (const name of usage.on) {
    alice.client.on(name, (data) => {
      (fired[name] = fired[name] || []).push(data);
    });
  }
  const subscriptionId = await within(PATIENCE_MS, 'subscribe() to settle',
    alice.client.subscribe(usage.subscribe.resource, settings.workspace, usage.subscribe.events));
  emit({ step: 'subscribed', subscriptionId });
  emit({ await: 'change' });
  const event = await until(`one of ${usage.on.join(', ')}`, () => {
    const name = Object.keys(fired)[0];
    return name && { name, data: fired[name][0] };
  });
  emit({ step: 'event', event });

  const bob = await authenticated(settings.deniedToken);
  if (bob.auth.success !== true) throw new Error(`auth failed: ${JSON.stringify(bob.auth)}`);
  let denied;
  try {
    const id = await within(PATIENCE_MS, 'a denied subscribe() to settle',
      bob.client.subscribe(usage.subscribe.resource, settings.workspace, usage.subscribe.events));
    denied = { resolved: id };
  } catch (e) {
    denied = { rejected: e.message };
  }
  // The seed's monitoring example, through the class: its metrics_update.
  const metrics = [];
  alice.client.on('monitoring.metrics_update', (data) => metrics.push(data));
  const monitoringId = await within(PATIENCE_MS, 'subscribe(monitoring) to settle',
    alice.client.subscribe('monitoring', settings.workspace, ['metrics_update']));
  await until('monitoring.metrics_update', () => metrics[0]);
  emit({ step: 'metrics', monitoringId, metrics: metrics[0] });
  alice.client.close();
  bob.client.close();
  return {
    subscriptionId,
    event,
    denied,
    usage,
    metrics: metrics[0],
    shapes: shapes(source, alice.sock.received.concat(bob.sock.received)),
  };
}

/**
 * Seed 001: its client code is the one line that opens the socket; its
 * reconnection strategy is prose, read from the seed and followed here
 * (wait, then exponential backoff to a maximum, give up after N failures).
 */
async function dashboard() {
  const source = seed('001_');
  const open = block(source, ['javascript', 'js'], (b) => b.includes('new WebSocket('), 'new WebSocket(').body;
  const pingBlock = blocks(section(source, /Heartbeat/)).find((b) => b.lang === 'json' && /"type":\s*"ping"/.test(b.body));
  if (!pingBlock) throw new Error('no ping message in the Heartbeat section');
  const strategy = section(source, /Reconnection Strategy/);
  const number = (re) => {
    const m = strategy.match(re);
    if (!m) throw new Error(`reconnection strategy: ${re} not found`);
    return Number(m[1]);
  };
  const rules = {
    firstDelayS: number(/Wait (\d+) seconds?/),
    maxDelayS: number(/max (\d+)\s*s/),
    attempts: number(/After (\d+) failed attempts/),
  };
  emit({ step: 'seed read', rules });

  const { context } = browser({});
  let failures = 0;
  let gaveUp = false;
  const connect = () => {
    run(context, open, 'seed001.js');
    const ws = context.ws;
    ws.onopen = () => {
      failures = 0;
      ws.send(pingBlock.body);
    };
    ws.onclose = () => {
      if (failures >= rules.attempts) {
        gaveUp = true;
        return;
      }
      const delay = failures === 0 ? rules.firstDelayS : Math.min(rules.firstDelayS * 2 ** failures, rules.maxDelayS);
      failures += 1;
      setTimeout(connect, delay * 1000);
    };
  };
  connect();

  const served = (sock) => {
    const types = sock.received.map((m) => m.type);
    return types.includes('connection') && types.includes('initial_state') && types.includes('pong') && types.includes('pod_event');
  };
  const first = await until('connection, initial_state, pong and a pod_event', () => sockets.find(served));
  emit({ step: 'first connection served', url: first.seedUrl });
  emit({ await: 'restart' });
  const again = await until('a reconnect served the same', () => (gaveUp ? 'gave up' : sockets.find((s) => s !== first && served(s))));
  if (again === 'gave up') throw new Error(`gave up after ${rules.attempts} attempts`);
  const closedWith = first.closeCode;
  context.ws.onclose = null;
  context.ws.close();
  const summary = (s) => ({
    types: [...new Set(s.received.map((m) => m.type))].sort(),
    errors: s.received.filter((m) => m.type === 'error'),
    connection: s.received.find((m) => m.type === 'connection'),
  });
  return {
    rules,
    sockets: sockets.length,
    first: summary(first),
    again: summary(again),
    closedWith,
    shapes: shapes(source, first.received),
  };
}

/**
 * Seed 002: the `connect()` snippet with its own 5 s reconnect, and the
 * first snippet with the "Extracting data" one (fetch `/api/clusters/{name}`
 * after each `cluster.updated`).
 */
async function notifications() {
  const source = seed('002_');
  const js = blocks(source).filter((b) => b.lang === 'javascript' || b.lang === 'js');
  const reconnect = block(source, ['javascript', 'js'], (b) => b.includes('function connect()'), 'function connect()').body;
  const first = js.find((b) => /^const ws = new WebSocket\(/m.test(b.body));
  const extracting = js.find((b) => b.body.includes('fetch(') && b.body.includes('ws.onmessage'));
  if (!first || !extracting) throw new Error('the first snippet or the "Extracting data" snippet is missing');

  const page = browser({});
  run(page.context, `${first.body}\n${extracting.body}`, 'seed002-fetch.js');
  const fetchSock = sockets[0];

  const { context } = browser({});
  run(context, reconnect, 'seed002-reconnect.js');
  const reconnecting = await until('the reconnecting snippet opens its socket', () => sockets[1]);
  const isNotification = (m) => typeof m.type === 'string' && m.type.startsWith('cluster.');
  const notified = (s) => s.received.some(isNotification);
  await until('a cluster notification on both snippets', () => notified(fetchSock) && notified(reconnecting));
  await until('the page fetched /api/clusters/{name}', () => page.fetched.length > 0);
  emit({ step: 'notified', fetched: page.fetched[0] });
  emit({ await: 'restart' });
  const again = await until('a reconnect that is notified again', () => sockets.slice(2).find(notified));
  const types = (s) => [...new Set(s.received.map((m) => m.type))].sort();
  return {
    sockets: sockets.length,
    first: types(reconnecting),
    again: types(again),
    fetched: page.fetched[0],
    sample: reconnecting.received.find(isNotification),
    shapes: shapes(source, reconnecting.received),
  };
}

const scenarios = { subscriptions, dashboard, notifications };

(async () => {
  if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`);
  const result = await scenarios[scenario]();
  emit({ ok: true, scenario, result });
  process.exit(0);
})().catch(fail);
