// Browser globals Headlamp's modules expect, installed before they load.
import WS from 'ws';

export const tap = {
  frames: { DATA: 0, ERROR: 0, COMPLETE: 0, other: 0 },
  // In-band 410 events (watch ERROR events with code 410).
  gone: [],
  // ERROR frames' messages, and the keys that received COMPLETE.
  errors: [],
  completed: [],
  sockets: 0,
  // The extensions each socket negotiated (`ws` offers permessage-deflate,
  // as browsers do).
  extensions: [],
};

function record(raw) {
  let frame;
  try {
    frame = JSON.parse(String(raw));
  } catch {
    tap.frames.other++;
    return;
  }
  const kind = frame.type in tap.frames ? frame.type : 'other';
  tap.frames[kind]++;
  const key = `${frame.clusterId}:${frame.path}:${frame.query}`;
  if (frame.type === 'COMPLETE') {
    tap.completed.push(key);
  } else if (frame.type === 'ERROR') {
    tap.errors.push({ key, data: frame.data });
  } else if (frame.type === 'DATA') {
    try {
      const ev = JSON.parse(frame.data);
      if (ev.type === 'ERROR' && ev.object && ev.object.code === 410) {
        tap.gone.push({ key, message: ev.object.message });
      }
    } catch {
      // Not Headlamp's concern here.
    }
  }
}

// A cookie jar shared by fetch and the WebSocket upgrade, like a browser's.
export const cookies = new Map();
function cookieHeader() {
  return [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
}
function storeCookies(headers) {
  const set = typeof headers.getSetCookie === 'function' ? headers.getSetCookie() : [];
  for (const line of set) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    if (eq > 0) cookies.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
  }
}

class BrowserWebSocket extends WS {
  constructor(url, protocols) {
    const headers = {};
    if (cookies.size) headers.cookie = cookieHeader();
    super(url, protocols ?? [], { headers });
    tap.sockets++;
    this.addEventListener('open', () => tap.extensions.push(this.extensions));
    // Registered before Headlamp's own onmessage, so it sees every frame.
    this.addEventListener('message', e => record(e.data));
  }
}
globalThis.WebSocket = BrowserWebSocket;

const nativeFetch = globalThis.fetch;
globalThis.fetch = async (url, init = {}) => {
  const headers = new Headers(init.headers);
  if (cookies.size && !headers.has('cookie')) headers.set('cookie', cookieHeader());
  const { credentials: _ignored, ...rest } = init;
  const response = await nativeFetch(url, { ...rest, headers });
  storeCookies(response.headers);
  return response;
};

const storage = new Map();
globalThis.localStorage = {
  getItem: k => (storage.has(k) ? storage.get(k) : null),
  setItem: (k, v) => storage.set(k, String(v)),
  removeItem: k => storage.delete(k),
  clear: () => storage.clear(),
};

// Replaced by the relay's address before anything connects; Headlamp's
// modules compute a few constants from it at load time.
globalThis.__harness = { appUrl: 'http://127.0.0.1/', cluster: null };
globalThis.window = globalThis.window ?? {
  location: { origin: 'http://127.0.0.1', pathname: '/', hash: '', reload() {} },
  localStorage: globalThis.localStorage,
};
globalThis.IS_REACT_ACT_ENVIRONMENT = false;

// stdout carries the protocol with the Rust test; everything else to stderr.
for (const level of ['log', 'info', 'debug', 'warn']) {
  console[level] = (...args) => console.error(`[${level}]`, ...args);
}
