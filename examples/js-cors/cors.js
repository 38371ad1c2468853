// js-cors: path rewrites and CORS for the Sluice gateway, as a WebAssembly component built
// with componentize-js from ../../wit/plugin.wit (world `plugin`).
//
// Config (JSON given to `init`; from `js-cors.toml` beside the wasm or `[plugin.js-cors]` in
// the gateway config), every key optional:
//
//   allow_origin = "*"                                   # access-control-allow-origin
//   allow_methods = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
//   max_age = 600                                        # seconds a preflight may be cached
//   [rewrite]                                            # client-path prefix -> replacement
//   "/js/old" = "/js/new"
//
// Plugins see the client's path, before a route's `strip_prefix`, so rewrite keys include the
// route's prefix. The longest matching key wins. `OPTIONS` requests are preflights: the plugin
// answers them itself with 204 and the CORS headers; the upstream is not called.
//
// How componentize-js maps the WIT (see docs/plugins-python-js.md):
// - exports are ES module exports in camelCase: `init`, `onRequest`, `onResponse`;
// - imports are ES imports from 'sluice:plugin/INTERFACE@0.2.0', functions in camelCase;
// - `borrow<request>` is an object with the resource's methods (`request.setPath(...)`), valid
//   only during the call;
// - `list<u8>` is a Uint8Array (header values, bodies); `option<T>` is the value or undefined;
// - `result<T, string>`: return T for ok; throw a string for err (an Error object traps). An
//   imported function whose result is err throws an error whose `payload` is the string;
//   left uncaught it becomes this export's err. Anything else thrown (a TypeError from a
//   bug) traps the instance and its message is lost, hence `guarded` below.
// - variants are `{ tag: 'continue' }` / `{ tag: 'respond', val: {...} }`.

import { log, counterAdd } from 'sluice:plugin/host@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder(); // replaces bytes that are not UTF-8, never throws

const bytes = (text) => encoder.encode(String(text));
const text = (value) => (value === undefined ? undefined : decoder.decode(value));

/**
 * Wraps a hook so that whatever it throws reaches the gateway as WIT err(string): a string
 * stays as is, a host error (thrown with the err string as `payload`) gives that string, and
 * an Error gives "TypeError: ...". Unwrapped, a thrown Error traps the instance instead.
 */
function guarded(hook) {
  return (...args) => {
    try {
      return hook(...args);
    } catch (e) {
      if (typeof e === 'string') throw e;
      if (e !== null && typeof e === 'object' && typeof e.payload === 'string') throw e.payload;
      throw String(e);
    }
  };
}

// Parsed once per instance by `init`; a pooled instance keeps it for every request it serves.
let config = {
  allowOrigin: '*',
  allowMethods: 'GET, POST, PUT, PATCH, DELETE, OPTIONS',
  maxAge: 600,
  rewrites: [], // [prefix, replacement], longest prefix first
  corsBytes: [], // corsHeaders(config) with the values encoded, for every response
};

export const init = guarded((configJson) => {
  let raw;
  try {
    raw = JSON.parse(configJson || '{}');
  } catch (e) {
    throw `config is not JSON: ${e.message}`; // a thrown string is WIT err(string)
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw 'config must be a table';
  }
  const next = { ...config, rewrites: [] };
  if (raw.allow_origin !== undefined) {
    if (typeof raw.allow_origin !== 'string' || raw.allow_origin === '') {
      throw '`allow_origin` must be a non-empty string';
    }
    next.allowOrigin = raw.allow_origin;
  }
  if (raw.allow_methods !== undefined) {
    if (typeof raw.allow_methods !== 'string' || raw.allow_methods === '') {
      throw '`allow_methods` must be a non-empty string';
    }
    next.allowMethods = raw.allow_methods;
  }
  if (raw.max_age !== undefined) {
    if (!Number.isInteger(raw.max_age) || raw.max_age < 0) {
      throw '`max_age` must be a whole number of seconds';
    }
    next.maxAge = raw.max_age;
  }
  const rewrite = raw.rewrite ?? {};
  if (rewrite === null || typeof rewrite !== 'object' || Array.isArray(rewrite)) {
    throw '`rewrite` must be a table of path prefix = replacement';
  }
  for (const [from, to] of Object.entries(rewrite)) {
    if (!from.startsWith('/') || typeof to !== 'string' || !to.startsWith('/')) {
      throw `rewrite "${from}" = ${JSON.stringify(to)}: both must be paths starting with /`;
    }
    next.rewrites.push([from, to]);
  }
  next.rewrites.sort((a, b) => b[0].length - a[0].length);
  // Encoded once here, not on every response (each statement of a hook runs per request).
  next.corsBytes = corsHeaders(next).map(([name, value]) => [name, bytes(value)]);
  config = next;
  // The hooks this plugin implements (WIT `flags hooks`): the gateway calls only these.
  return { onRequest: true, onResponse: true };
});

/** The CORS headers every answer gets under `cfg`, as [name, value] pairs. */
function corsHeaders(cfg) {
  const headers = [
    ['access-control-allow-origin', cfg.allowOrigin],
    ['access-control-allow-methods', cfg.allowMethods],
  ];
  if (cfg.allowOrigin !== '*') headers.push(['vary', 'origin']);
  return headers;
}

export const onRequest = guarded((request) => {
  if (request.method() === 'OPTIONS') {
    counterAdd('preflight', 1n); // u64 is a BigInt
    const headers = corsHeaders(config);
    // Allow whatever headers the browser asks to send (a permissive policy, fine for `*`).
    const asked = text(request.header('access-control-request-headers'));
    if (asked) headers.push(['access-control-allow-headers', asked]);
    headers.push(['access-control-max-age', String(config.maxAge)]);
    return {
      tag: 'respond',
      val: {
        status: 204,
        headers: headers.map(([name, value]) => ({ name, value: bytes(value) })),
        body: new Uint8Array(0),
      },
    };
  }
  const path = request.path();
  for (const [from, to] of config.rewrites) {
    if (path.startsWith(from)) {
      const rewritten = to + path.slice(from.length);
      // A refused path throws; uncaught, it fails this call with the gateway's reason.
      request.setPath(rewritten);
      log('debug', `rewrote ${path} to ${rewritten}`);
      counterAdd('rewrites', 1n);
      break;
    }
  }
  return { tag: 'continue' };
});

export const onResponse = guarded((_request, response) => {
  for (const [name, value] of config.corsBytes) {
    response.setHeader(name, value);
  }
});
