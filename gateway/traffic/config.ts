// The `traffic` section of the gateway config: per upstream (the
// (protomesh.v1.service).name of a service), a canary target and a shadow
// target. Parsing checks shape and ranges and fills the defaults; checking
// against the upstreams the gateway actually serves happens in
// `checkTrafficConfig`, which needs to know them.
//
//   "traffic": {
//     "<upstream>": {
//       "canary": { "target": "127.0.0.1:6002", "percent": 10, "header": "x-canary", "sticky": "user" },
//       "shadow": { "target": "127.0.0.1:6003", "percent": 5, "timeoutMs": 500, "maxConcurrent": 16,
//                   "allowNonIdempotent": false, "streams": false,
//                   "methods": { "pkg.Service/Method": { "percent": 100 } } }
//     }
//   }

/** Which request attribute keeps a client on one version. */
export type StickyKey = "user" | "ip" | "none";

export interface CanaryRule {
  /** "host:port" (or any grpc-js target) of the canary deployment. */
  readonly target: string;
  /** Share of keys (0-100, two decimals) routed to the canary. */
  readonly percent: number;
  /** Request header that forces a version ("always" / "never"); null: no override. */
  readonly header: string | null;
  /** "user": verified user id, else client IP, else random; "ip": client IP, else random; "none": random. */
  readonly sticky: StickyKey;
  /** Mixed into the hash so different upstreams split users independently; the upstream name by default. */
  readonly salt: string;
}

/** Per-method shadow settings; anything unset comes from the upstream's. */
export interface ShadowMethodRule {
  readonly percent?: number;
  readonly allowNonIdempotent?: boolean;
  readonly streams?: boolean;
}

export interface ShadowRule {
  /** Where the mirrored calls go. */
  readonly target: string;
  /** Share of calls (0-100) mirrored. */
  readonly percent: number;
  /** The shadow call's own deadline. */
  readonly timeoutMs: number;
  /** Shadow calls in flight at once for this upstream; more are dropped (and counted). */
  readonly maxConcurrent: number;
  /**
   * Mirror methods not marked idempotent. Off by default: a mirrored
   * PlaceOrder would place a second order.
   */
  readonly allowNonIdempotent: boolean;
  /** Mirror server-streaming calls too (compared by final status only). */
  readonly streams: boolean;
  /** Keyed by "package.Service/Method" or the bare method name. */
  readonly methods: Readonly<Record<string, ShadowMethodRule>>;
}

export interface UpstreamTraffic {
  readonly canary?: CanaryRule;
  readonly shadow?: ShadowRule;
}

/** Keyed by upstream name. */
export type TrafficConfig = Readonly<Record<string, UpstreamTraffic>>;

export class TrafficConfigError extends Error {
  override name = "TrafficConfigError";
}

export const shadowDefaults = { percent: 100, timeoutMs: 1000, maxConcurrent: 32 } as const;
export const canaryDefaults = { percent: 0, header: "x-canary", sticky: "user" as StickyKey } as const;

const headerName = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;
const upstreamKey = /^[A-Za-z0-9][\w.-]*$/;
const methodKey = /^(?:[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+\/)?[A-Za-z_]\w*$/;

type Obj = Record<string, unknown>;

function object(where: string, v: unknown): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new TrafficConfigError(`"${where}" must be an object`);
  return v as Obj;
}

function onlyKeys(where: string, o: Obj, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) {
      throw new TrafficConfigError(`unknown key "${where}.${k}" (allowed: ${allowed.join(", ")})`);
    }
  }
}

function percent(where: string, v: unknown, fallback: number | undefined): number {
  if (v === undefined) {
    if (fallback === undefined) throw new TrafficConfigError(`"${where}" is required`);
    return fallback;
  }
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > 100) {
    throw new TrafficConfigError(`"${where}" must be a number from 0 to 100, got ${JSON.stringify(v)}`);
  }
  return v;
}

function positiveInt(where: string, v: unknown, fallback: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
    throw new TrafficConfigError(`"${where}" must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function bool(where: string, v: unknown, fallback: boolean): boolean {
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw new TrafficConfigError(`"${where}" must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function target(where: string, v: unknown): string {
  if (v === undefined) throw new TrafficConfigError(`"${where}" is required (the "host:port" to send calls to)`);
  if (typeof v !== "string" || v.trim() === "" || /\s/.test(v)) {
    throw new TrafficConfigError(`"${where}" must be a target like "host:port", got ${JSON.stringify(v)}`);
  }
  return v;
}

function parseCanary(where: string, raw: unknown, upstream: string): CanaryRule {
  const o = object(where, raw);
  onlyKeys(where, o, ["target", "percent", "header", "sticky", "salt"]);
  let header: string | null = canaryDefaults.header;
  if (o.header === null || o.header === false || o.header === "") header = null;
  else if (o.header !== undefined) {
    if (typeof o.header !== "string" || !headerName.test(o.header.toLowerCase())) {
      throw new TrafficConfigError(`"${where}.header" must be a header name (or null for no override), got ${JSON.stringify(o.header)}`);
    }
    header = o.header.toLowerCase();
  }
  const sticky = o.sticky ?? canaryDefaults.sticky;
  if (sticky !== "user" && sticky !== "ip" && sticky !== "none") {
    throw new TrafficConfigError(`"${where}.sticky" must be "user", "ip" or "none", got ${JSON.stringify(o.sticky)}`);
  }
  if (o.salt !== undefined && typeof o.salt !== "string") throw new TrafficConfigError(`"${where}.salt" must be a string`);
  return {
    target: target(`${where}.target`, o.target),
    percent: Math.round(percent(`${where}.percent`, o.percent, canaryDefaults.percent) * 100) / 100,
    header,
    sticky,
    salt: (o.salt as string | undefined) ?? upstream,
  };
}

function parseShadowMethod(where: string, raw: unknown): ShadowMethodRule {
  const o = object(where, raw);
  onlyKeys(where, o, ["percent", "allowNonIdempotent", "streams"]);
  const out: { percent?: number; allowNonIdempotent?: boolean; streams?: boolean } = {};
  if (o.percent !== undefined) out.percent = percent(`${where}.percent`, o.percent, undefined);
  if (o.allowNonIdempotent !== undefined) out.allowNonIdempotent = bool(`${where}.allowNonIdempotent`, o.allowNonIdempotent, false);
  if (o.streams !== undefined) out.streams = bool(`${where}.streams`, o.streams, false);
  return out;
}

function parseShadow(where: string, raw: unknown): ShadowRule {
  const o = object(where, raw);
  onlyKeys(where, o, ["target", "percent", "timeoutMs", "maxConcurrent", "allowNonIdempotent", "streams", "methods"]);
  const methods: Record<string, ShadowMethodRule> = {};
  if (o.methods !== undefined) {
    for (const [k, v] of Object.entries(object(`${where}.methods`, o.methods))) {
      if (!methodKey.test(k)) {
        throw new TrafficConfigError(`"${where}.methods" key "${k}" must look like "package.Service/Method" or "Method"`);
      }
      methods[k] = parseShadowMethod(`${where}.methods.${k}`, v);
    }
  }
  return {
    target: target(`${where}.target`, o.target),
    percent: percent(`${where}.percent`, o.percent, shadowDefaults.percent),
    timeoutMs: positiveInt(`${where}.timeoutMs`, o.timeoutMs, shadowDefaults.timeoutMs),
    maxConcurrent: positiveInt(`${where}.maxConcurrent`, o.maxConcurrent, shadowDefaults.maxConcurrent),
    allowNonIdempotent: bool(`${where}.allowNonIdempotent`, o.allowNonIdempotent, false),
    streams: bool(`${where}.streams`, o.streams, false),
    methods,
  };
}

/**
 * Validates the `traffic` section and fills its defaults; throws
 * TrafficConfigError naming the offending key. Accepts its own output.
 */
export function parseTrafficConfig(raw: unknown): TrafficConfig {
  if (raw === undefined || raw === null) return {};
  const o = object("traffic", raw);
  const out: Record<string, UpstreamTraffic> = {};
  for (const [upstream, v] of Object.entries(o)) {
    const where = `traffic.${upstream}`;
    if (!upstreamKey.test(upstream)) throw new TrafficConfigError(`"traffic" key "${upstream}" is not an upstream name`);
    const u = object(where, v);
    onlyKeys(where, u, ["canary", "shadow"]);
    out[upstream] = {
      canary: u.canary === undefined ? undefined : parseCanary(`${where}.canary`, u.canary, upstream),
      shadow: u.shadow === undefined ? undefined : parseShadow(`${where}.shadow`, u.shadow),
    };
  }
  return out;
}

/** What the gateway serves: upstream names, each with its "/package.Service/Method" paths (undefined: not checked). */
export type KnownUpstreams = ReadonlyMap<string, readonly string[] | undefined>;

/** Rejects upstreams (and shadow method keys) the gateway does not serve. */
export function checkTrafficConfig(config: TrafficConfig, known: KnownUpstreams): void {
  for (const [upstream, u] of Object.entries(config)) {
    if (!known.has(upstream)) {
      const names = [...known.keys()].sort().join(", ") || "none";
      throw new TrafficConfigError(`"traffic.${upstream}": unknown upstream "${upstream}" (known: ${names})`);
    }
    const methods = known.get(upstream);
    for (const key of Object.keys(u.shadow?.methods ?? {})) {
      if (methods && !methods.some((p) => methodMatches(key, p))) {
        throw new TrafficConfigError(`"traffic.${upstream}.shadow.methods.${key}": no public method "${key}" on upstream "${upstream}"`);
      }
    }
  }
}

/** Whether a config key ("pkg.Service/Method" or "Method") names the gRPC path "/pkg.Service/Method". */
export function methodMatches(key: string, grpcPath: string): boolean {
  return key.includes("/") ? grpcPath === `/${key}` : grpcPath.endsWith(`/${key}`);
}
