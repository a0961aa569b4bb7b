// Runs Headlamp's own compiled frontend code (the v2 k8s API modules of
// @kinvolk/headlamp-plugin) against kubemux, one scenario per process.
//
// Talks to the Rust test over stdio, one JSON object a line: the harness
// writes {"ask": ...} and reads the answer (the test drives the simulator and
// the proxy), and ends with {"result": {...}}, which the test asserts on.
import { tap, cookies } from './globals.js';
import readline from 'node:readline';
import React from 'react';
import TestRenderer from 'react-test-renderer';
import { QueryClientProvider } from '@tanstack/react-query';
import { startRelay, parseAddr } from './relay.js';

import { WebSocketManager } from './node_modules/@kinvolk/headlamp-plugin/lib/lib/k8s/api/v2/multiplexer.js';
import { useKubeObjectList } from './node_modules/@kinvolk/headlamp-plugin/lib/lib/k8s/api/v2/useKubeObjectList.js';
import { useKubeObject } from './node_modules/@kinvolk/headlamp-plugin/lib/lib/k8s/api/v2/hooks.js';
import { KubeList } from './node_modules/@kinvolk/headlamp-plugin/lib/lib/k8s/api/v2/KubeList.js';
import { clusterFetch } from './node_modules/@kinvolk/headlamp-plugin/lib/lib/k8s/api/v2/fetch.js';
import { queryClient } from './node_modules/@kinvolk/headlamp-plugin/lib/lib/queryClient.js';

const PATIENCE_MS = 20000;
const sleep = ms => new Promise(r => setTimeout(r, ms));

// ---- stdio protocol with the Rust test ----
const answers = [];
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', line => {
  const waiter = answers.shift();
  if (waiter) waiter(JSON.parse(line));
});
function ask(what, extra = {}) {
  process.stdout.write(`${JSON.stringify({ ask: what, ...extra })}\n`);
  return new Promise(resolve => answers.push(resolve));
}
function finish(result) {
  const sent = tap.sent;
  process.stdout.write(
    `${JSON.stringify({ result: { ...result, frames: tap.frames, gone: tap.gone, errors: tap.errors, completed: tap.completed, sockets: tap.sockets, extensions: tap.extensions, sent: sent.length } })}\n`
  );
  process.exit(0);
}

// ---- outgoing frames, for the report ----
tap.sent = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  try {
    tap.sent.push(JSON.parse(data));
  } catch {
    tap.sent.push(data);
  }
  return send.call(this, data);
};

// ---- the resource classes the hooks are given (the app's KubeObject
// subclasses are app code; only what the v2 hooks use is here) ----
function kubeClass(kind, version, resource, group = '') {
  const K = class {
    constructor(json, cluster) {
      this.jsonData = json;
      Object.assign(this, json);
      if (cluster) this.cluster = cluster;
    }
  };
  K.kind = kind;
  K.apiVersion = group ? `${group}/${version}` : version;
  K.apiName = resource;
  K.apiEndpoint = { apiInfo: [{ group, version, resource }] };
  return K;
}
const Pod = kubeClass('Pod', 'v1', 'pods');
const Secret = kubeClass('Secret', 'v1', 'secrets');

// ---- rendering hooks with React 18 + react-test-renderer ----
function mount(useHook, client = queryClient) {
  const state = { current: null, renders: 0 };
  function Probe() {
    state.current = useHook();
    state.renders++;
    return null;
  }
  const root = TestRenderer.create(
    React.createElement(QueryClientProvider, { client }, React.createElement(Probe))
  );
  return { state, unmount: () => root.unmount() };
}

function mountList(clusters, kubeObjectClass = Pod) {
  const requests = clusters.map(cluster => ({ cluster }));
  return mount(() => useKubeObjectList({ requests, kubeObjectClass }));
}

function objectKey(o) {
  const md = o.metadata;
  return md.namespace ? `${md.namespace}/${md.name}` : md.name;
}

// cluster -> (namespace/name -> resourceVersion) of what the hook renders.
function renderedVersions(view, clusters) {
  const out = {};
  for (const c of clusters) out[c] = {};
  const items = view.state.current?.items ?? [];
  for (const item of items) {
    const c = item.cluster ?? clusters[0];
    (out[c] = out[c] ?? {})[objectKey(item)] = item.metadata.resourceVersion;
  }
  return out;
}

function same(a, b) {
  return JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));
}
function sorted(v) {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    return Object.fromEntries(Object.keys(v).sort().map(k => [k, sorted(v[k])]));
  }
  return v;
}

async function until(what, f, patience = PATIENCE_MS) {
  const deadline = Date.now() + patience;
  while (!f()) {
    if (Date.now() > deadline) return false;
    await sleep(25);
  }
  return true;
}

// Stops the churn, then waits (up to PATIENCE_MS) until every view renders
// exactly the simulator's LIST; returns what each view rendered.
// Gives up early once kubemux answered a 410: Headlamp never recovers a
// list whose watch ended that way (the Rust test reports the 410 itself).
async function converge(views, clusters, goneBefore = 0) {
  await ask('churn', { rate: 0 });
  const server = {};
  for (const c of clusters) server[c] = (await ask('list', { cluster: c })).versions;
  await until('convergence', () =>
    tap.gone.length > goneBefore || views.every(v => same(renderedVersions(v, clusters), server))
  );
  const ok = views.every(v => same(renderedVersions(v, clusters), server));
  return { converged: ok, rendered: views.map(v => renderedVersions(v, clusters)) };
}

async function counters(clusters) {
  const out = {};
  for (const c of clusters) out[c] = await ask('counters', { cluster: c });
  return out;
}

// ---- scenarios ----
const scenarios = {
  // A first viewer of pods while the simulator churns: LIST through kubemux's
  // REST path, then the multiplexed watch from the list's version.
  async first_viewer(o) {
    const rounds = [];
    for (let i = 0; i < o.rounds; i++) {
      await ask('idle');
      await ask('churn', { rate: o.rate });
      const gone = tap.gone.length;
      const view = mountList([o.cluster]);
      await sleep(o.secs * 1000);
      const c = await converge([view], [o.cluster], gone);
      rounds.push({
        converged: c.converged,
        rendered: c.rendered[0],
        listVersion: requestedVersions(o.cluster).at(-1) ?? null,
      });
      view.unmount();
      queryClient.clear();
      await sleep(300); // Headlamp's 100 ms unsubscribe debounce, then CLOSE
    }
    finish({ rounds });
  },

  // A second instance of the list hook while the first is live.
  async second_view(o) {
    // The first view subscribes before the churn starts, so this scenario
    // is not also a first-viewer race (first_viewer is).
    const first = mountList([o.cluster]);
    await subscribed(1);
    await ask('churn', { rate: o.rate });
    await until('first view live', () => tap.frames.DATA > 0);
    await sleep(1000);
    const before = await counters([o.cluster]);
    const second = mountList([o.cluster]);
    await sleep(o.secs * 1000);
    const c = await converge([first, second], [o.cluster]);
    const after = await counters([o.cluster]);
    first.unmount();
    second.unmount();
    finish({ ...c, before, after, requests: requestedVersions(o.cluster) });
  },

  // Headlamp's newer source: after every event, REQUEST the list again from
  // the event's resourceVersion and CLOSE the previous subscription, through
  // WebSocketManager.subscribe and the cleanup it returns.
  async resubscribe_churn(o) {
    const path = '/api/v1/pods';
    const response = await clusterFetch('api/v1/pods', { cluster: o.cluster });
    let list = await response.json();
    let subscribed = list.metadata.resourceVersion;
    let cleanup = null;
    let resubscriptions = 0;
    let pending = Promise.resolve();
    const onUpdate = update => {
      list = KubeList.applyUpdate(list, update, Pod, o.cluster);
      const rv = update?.object?.metadata?.resourceVersion;
      if (rv && Number(rv) > Number(subscribed)) {
        subscribed = rv;
        pending = pending.then(async () => {
          const old = cleanup;
          cleanup = await WebSocketManager.subscribe(o.cluster, path, `watch=1&resourceVersion=${rv}`, onUpdate);
          resubscriptions++;
          if (old) old();
        });
      }
    };
    cleanup = await WebSocketManager.subscribe(o.cluster, path, `watch=1&resourceVersion=${subscribed}`, onUpdate);
    await ask('churn', { rate: o.rate });
    await until('first event', () => tap.frames.DATA > 0);
    await sleep(1000);
    const before = await counters([o.cluster]);
    await sleep(o.secs * 1000);
    await ask('churn', { rate: 0 });
    const server = (await ask('list', { cluster: o.cluster })).versions;
    const listVersions = () => Object.fromEntries(list.items.map(i => [objectKey(i), i.metadata.resourceVersion]));
    const converged = await until('convergence', () => same(listVersions(), server));
    await pending;
    const after = await counters([o.cluster]);
    if (cleanup) cleanup();
    finish({
      converged,
      rendered: listVersions(),
      before,
      after,
      resubscriptions,
      closes: tap.sent.filter(m => m.type === 'CLOSE').length,
    });
  },

  // One list hook over the given clusters (Headlamp's multi-cluster view):
  // one socket, each cluster converges.
  async clusters(o) {
    const view = mountList(o.clusters);
    await subscribed(o.clusters.length);
    await ask('churn', { rate: o.rate });
    await sleep(o.secs * 1000);
    const c = await converge([view], o.clusters);
    const after = await counters(o.clusters);
    const shown = (view.state.current?.errors ?? []).map(e => ({ message: e.message, status: e.status ?? null }));
    view.unmount();
    finish({ ...c, rendered: c.rendered[0], after, shown });
  },

  // List, kubemux restarts, the user navigates away and back: the list is
  // re-opened from react-query's cache (Headlamp's staleTime is 3 min, so no
  // new LIST) and watched from the cached resourceVersion.
  async restart(o) {
    const first = mountList([o.cluster]);
    await subscribed(1);
    await ask('churn', { rate: o.rate });
    await sleep((o.secs * 1000) / 2);
    await ask('stop');
    await until('socket closed', () => WebSocketManager.socketMultiplexer === null, 5000);
    first.unmount();
    await sleep(300);
    const cachedVersion = cachedListVersion(o.cluster);
    const { addr } = await ask('start');
    relay.target = parseAddr(addr);
    const second = mountList([o.cluster]);
    await sleep((o.secs * 1000) / 2);
    const c = await converge([second], [o.cluster]);
    second.unmount();
    finish({ ...c, rendered: c.rendered[0], cachedVersion, requests: requestedVersions(o.cluster) });
  },

  // The details view: one pod through useKubeObject, modified meanwhile.
  async details(o) {
    const { versions } = await ask('list', { cluster: o.cluster });
    const [namespace, name] = Object.keys(versions).sort()[0].split('/');
    const view = mount(() => useKubeObject({ kubeObjectClass: Pod, namespace, name, cluster: o.cluster }));
    const loaded = await until('object loaded', () => !!view.state.current?.data);
    const subscribed = await until('watch subscribed', () =>
      tap.sent.some(m => m.type === 'REQUEST' && m.query.includes('fieldSelector')) && tap.frames.DATA > 0
    );
    const initial = view.state.current?.data?.metadata?.resourceVersion ?? null;
    const { resourceVersion: expected } = await ask('modify', { cluster: o.cluster, namespace, name });
    await until('modification shown', () => view.state.current?.data?.metadata?.resourceVersion === expected);
    const shown = view.state.current?.data?.metadata?.resourceVersion ?? null;
    view.unmount();
    finish({ loaded, subscribed, initial, expected, shown, name: `${namespace}/${name}` });
  },

  // Refusals: what Headlamp shows for them.
  async errors(o) {
    const views = {
      unknown_cluster: mountList(['no-such-cluster']),
      forbidden: mountList([o.cluster], Secret),
    };
    const shown = {};
    for (const [what, view] of Object.entries(views)) {
      await until(what, () => view.state.current?.errors?.length > 0);
      const e = view.state.current?.errors?.[0];
      shown[what] = e ? { message: e.message, status: e.status ?? null } : null;
      view.unmount();
    }
    const ws = {};
    for (const [what, cluster, path] of [
      ['ws_unknown_cluster', 'no-such-cluster', '/api/v1/pods'],
      ['ws_forbidden', o.cluster, '/api/v1/secrets'],
    ]) {
      const got = [];
      const cleanup = await WebSocketManager.subscribe(cluster, path, 'watch=1', u => got.push(u));
      const key = WebSocketManager.createKey(cluster, path, 'watch=1');
      await until(`${what} answered`, () => got.length > 0);
      await until(`${what} completed`, () => WebSocketManager.completedPaths.has(key), 3000);
      ws[what] = { updates: got, completed: WebSocketManager.completedPaths.has(key) };
      cleanup();
    }
    finish({ shown, ws });
  },
};

// Waits until `n` REQUESTs went out, and a round trip more, so a watch is
// live before the churn starts.
async function subscribed(n) {
  await until('subscribed', () => tap.sent.filter(m => m.type === 'REQUEST').length >= n);
  await sleep(500);
}

// The resourceVersions this process REQUESTed for `cluster`'s pods.
function requestedVersions(cluster) {
  return tap.sent
    .filter(m => m.type === 'REQUEST' && m.clusterId === cluster && m.path === '/api/v1/pods')
    .map(m => new URLSearchParams(m.query).get('resourceVersion'));
}

function cachedListVersion(cluster) {
  for (const q of queryClient.getQueryCache().getAll()) {
    const d = q.state.data;
    if (d && d.cluster === cluster && d.list) return d.list.metadata.resourceVersion ?? null;
  }
  return null;
}

// ---- main ----
let relay;
async function main() {
  const [scenario, json] = process.argv.slice(2);
  const options = JSON.parse(json ?? '{}');
  relay = await startRelay(parseAddr(options.proxy), options.delayMs ?? 30);
  globalThis.__harness.appUrl = `http://127.0.0.1:${relay.port}/`;
  globalThis.__harness.cluster = options.cluster ?? null;
  // Cookies as Headlamp's backend would have set them (its auth cookies).
  for (const [name, value] of Object.entries(options.cookies ?? {})) cookies.set(name, value);
  if (!scenarios[scenario]) {
    console.error(`unknown scenario ${scenario}; one of ${Object.keys(scenarios).join(', ')}`);
    process.exit(2);
  }
  try {
    await scenarios[scenario](options);
  } catch (e) {
    console.error(e);
    process.stdout.write(`${JSON.stringify({ failed: String(e && e.stack ? e.stack : e) })}\n`);
    process.exit(1);
  }
}
main();
