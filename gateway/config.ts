// Gateway configuration: a JSON or YAML file overriding the policies declared
// in the proto options, hot-reloaded when the file changes. A reload swaps
// one immutable object; a request keeps the policy it was admitted with, so
// nothing in flight is dropped or changed midway.
import { readFileSync, watch, type FSWatcher } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import type { BreakerSpec, GatewayMethod, MethodPolicySpec, RateLimitSpec } from "./descriptors.js";
import type { CorsSettings } from "./policy/cors.js";
import { parseTrafficConfig, type TrafficConfig } from "./traffic/config.js";

export interface MethodOverride {
  auth?: MethodPolicySpec["auth"];
  timeoutMs?: number;
  idempotent?: boolean;
  /** null removes the declared limit. */
  rateLimit?: Partial<RateLimitSpec> | null;
  /** A breaker for this method alone (else the upstream's). */
  breaker?: Partial<BreakerSpec>;
}

export interface GatewayConfig {
  readonly jsonStyle: { readonly useProtoFieldName: boolean; readonly emitDefaults: boolean };
  readonly cors: CorsSettings;
  readonly limits: {
    /** Largest request body (REST, Connect, gRPC-Web, gRPC messages). */
    readonly maxBodyBytes: number;
    /** Largest request header block. */
    readonly maxHeaderBytes: number;
    /** HTTP/2 streams per connection. */
    readonly maxConcurrentStreams: number;
    /** Time allowed to receive a request body: slow senders are cut off. */
    readonly bodyTimeoutMs: number;
  };
  readonly rateLimit: { readonly shadow: boolean; readonly replicas: number; readonly maxKeys: number };
  /** Deadline for unary calls of methods without a timeout. */
  readonly defaultTimeoutMs: number;
  /** Use the first X-Forwarded-For hop as the client IP (behind a trusted proxy). */
  readonly trustForwardedFor: boolean;
  /** Keyed by "package.Service/Method". */
  readonly methods: Readonly<Record<string, MethodOverride>>;
  /** Keyed by upstream name. */
  readonly services: Readonly<Record<string, { breaker?: Partial<BreakerSpec> }>>;
  /** Canary and shadow targets keyed by upstream name (gateway/traffic/config.ts). */
  readonly traffic?: TrafficConfig;
}

export const defaultConfig: GatewayConfig = {
  jsonStyle: { useProtoFieldName: false, emitDefaults: false },
  cors: { allowedOrigins: [] },
  limits: { maxBodyBytes: 1 << 20, maxHeaderBytes: 16 << 10, maxConcurrentStreams: 256, bodyTimeoutMs: 10_000 },
  rateLimit: { shadow: false, replicas: 1, maxKeys: 10_000 },
  defaultTimeoutMs: 10_000,
  trustForwardedFor: false,
  methods: {},
  services: {},
  traffic: {},
};

export class ConfigError extends Error {}

const topKeys = new Set(Object.keys(defaultConfig));

/** Validates and completes a parsed config object; throws ConfigError naming the bad key. */
export function parseConfig(raw: unknown, base: GatewayConfig = defaultConfig): GatewayConfig {
  if (raw === null || raw === undefined) return base;
  if (typeof raw !== "object" || Array.isArray(raw)) throw new ConfigError("config must be an object");
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!topKeys.has(k)) throw new ConfigError(`unknown config key "${k}"`);
  const obj = (k: string): Record<string, unknown> => {
    const v = o[k];
    if (v === undefined) return {};
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new ConfigError(`"${k}" must be an object`);
    return v as Record<string, unknown>;
  };
  const num = (where: string, v: unknown, fallback: number): number => {
    if (v === undefined) return fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new ConfigError(`"${where}" must be a non-negative number`);
    return v;
  };
  const bool = (where: string, v: unknown, fallback: boolean): boolean => {
    if (v === undefined) return fallback;
    if (typeof v !== "boolean") throw new ConfigError(`"${where}" must be true or false`);
    return v;
  };
  const js = obj("jsonStyle");
  const cors = obj("cors");
  const limits = obj("limits");
  const rl = obj("rateLimit");
  const origins = cors.allowedOrigins ?? base.cors.allowedOrigins;
  if (!Array.isArray(origins) || !origins.every((x) => typeof x === "string")) {
    throw new ConfigError(`"cors.allowedOrigins" must be a list of strings`);
  }
  const methods = obj("methods") as Record<string, MethodOverride>;
  for (const [name, m] of Object.entries(methods)) {
    if (!/^[\w.]+\/\w+$/.test(name)) throw new ConfigError(`methods key "${name}" must look like "package.Service/Method"`);
    if (m.auth !== undefined && !["none", "user", "admin"].includes(m.auth)) {
      throw new ConfigError(`"methods.${name}.auth" must be none, user or admin`);
    }
    num(`methods.${name}.timeoutMs`, m.timeoutMs, 0);
    if (m.rateLimit) {
      num(`methods.${name}.rateLimit.requests`, m.rateLimit.requests, 0);
      num(`methods.${name}.rateLimit.periodMs`, m.rateLimit.periodMs, 0);
      num(`methods.${name}.rateLimit.burst`, m.rateLimit.burst, 0);
    }
  }
  return {
    jsonStyle: {
      useProtoFieldName: bool("jsonStyle.useProtoFieldName", js.useProtoFieldName, base.jsonStyle.useProtoFieldName),
      emitDefaults: bool("jsonStyle.emitDefaults", js.emitDefaults, base.jsonStyle.emitDefaults),
    },
    cors: { allowedOrigins: origins as string[], maxAgeSec: num("cors.maxAgeSec", cors.maxAgeSec, base.cors.maxAgeSec ?? 7200) },
    limits: {
      maxBodyBytes: num("limits.maxBodyBytes", limits.maxBodyBytes, base.limits.maxBodyBytes),
      maxHeaderBytes: num("limits.maxHeaderBytes", limits.maxHeaderBytes, base.limits.maxHeaderBytes),
      maxConcurrentStreams: num("limits.maxConcurrentStreams", limits.maxConcurrentStreams, base.limits.maxConcurrentStreams),
      bodyTimeoutMs: num("limits.bodyTimeoutMs", limits.bodyTimeoutMs, base.limits.bodyTimeoutMs),
    },
    rateLimit: {
      shadow: bool("rateLimit.shadow", rl.shadow, base.rateLimit.shadow),
      replicas: Math.max(1, num("rateLimit.replicas", rl.replicas, base.rateLimit.replicas)),
      maxKeys: Math.max(1, num("rateLimit.maxKeys", rl.maxKeys, base.rateLimit.maxKeys)),
    },
    defaultTimeoutMs: num("defaultTimeoutMs", o.defaultTimeoutMs, base.defaultTimeoutMs),
    trustForwardedFor: bool("trustForwardedFor", o.trustForwardedFor, base.trustForwardedFor),
    methods,
    services: obj("services") as GatewayConfig["services"],
    traffic: trafficSection(o.traffic === undefined ? base.traffic : o.traffic),
  };
}

function trafficSection(raw: unknown): TrafficConfig {
  try {
    return parseTrafficConfig(raw);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
}

/**
 * What the environment adds to a config from a file or the defaults: the replicas x worker
 * processes that share a rate limit (GATEWAY_REPLICAS, GATEWAY_WORKERS) and the CORS origins of
 * CORS_ORIGINS, after the file's own. Applied to every config the gateway takes, at start and
 * on each reload of the file (as startGateway's overlay), never to one it already applied: a
 * reloaded file then keeps them, and they are not counted twice.
 */
export function withEnvironment(c: GatewayConfig, env: { GATEWAY_REPLICAS?: string; CORS_ORIGINS?: string }, workers = 1): GatewayConfig {
  const replicas = env.GATEWAY_REPLICAS ? Number(env.GATEWAY_REPLICAS) : c.rateLimit.replicas;
  if (!Number.isInteger(replicas) || replicas < 1) throw new ConfigError(`GATEWAY_REPLICAS must be a whole number >= 1, got ${env.GATEWAY_REPLICAS}`);
  const extraOrigins = (env.CORS_ORIGINS ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  return {
    ...c,
    // Every worker process enforces its share too.
    rateLimit: { ...c.rateLimit, replicas: replicas * workers },
    cors: { ...c.cors, allowedOrigins: [...c.cors.allowedOrigins, ...extraOrigins.filter((o) => !c.cors.allowedOrigins.includes(o))] },
  };
}

export function readConfigFile(path: string, base: GatewayConfig = defaultConfig): GatewayConfig {
  const text = readFileSync(path, "utf8");
  let raw: unknown;
  try {
    raw = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
  try {
    return parseConfig(raw, base);
  } catch (e) {
    throw new ConfigError(`${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/**
 * Watches `path` (its directory, so editors that replace the file are seen)
 * and calls `onChange` with each valid new config; an invalid file keeps the
 * current config and reports through `onError`.
 */
export function watchConfigFile(
  path: string,
  onChange: (c: GatewayConfig) => void,
  onError: (e: Error) => void,
  base: GatewayConfig = defaultConfig,
): FSWatcher {
  const full = resolve(path);
  let timer: NodeJS.Timeout | undefined;
  let last = "";
  const reload = () => {
    timer = undefined;
    let text: string;
    try {
      text = readFileSync(full, "utf8");
    } catch (e) {
      onError(e as Error);
      return;
    }
    if (text === last) return;
    try {
      const c = readConfigFile(full, base);
      last = text;
      onChange(c);
    } catch (e) {
      onError(e as Error);
    }
  };
  try {
    last = readFileSync(full, "utf8");
  } catch {
    /* created later */
  }
  const w = watch(dirname(full), (_event, file) => {
    if (file !== null && file !== basename(full)) return;
    clearTimeout(timer);
    timer = setTimeout(reload, 30);
  });
  return w;
}

// Both functions below run on every call; a config object never changes (a
// reload replaces it), so their results are memoized per config and method.
const policyMemo = new WeakMap<GatewayConfig, Map<GatewayMethod, MethodPolicySpec>>();
const breakerMemo = new WeakMap<GatewayConfig, Map<GatewayMethod, { name: string; spec: BreakerSpec }>>();

function memo<V>(store: WeakMap<GatewayConfig, Map<GatewayMethod, V>>, c: GatewayConfig, m: GatewayMethod, make: () => V): V {
  let byMethod = store.get(c);
  if (!byMethod) store.set(c, (byMethod = new Map()));
  let v = byMethod.get(m);
  if (v === undefined) byMethod.set(m, (v = make()));
  return v;
}

/** A method's policy: the proto option, then the config's override. */
export function effectivePolicy(m: GatewayMethod, c: GatewayConfig): MethodPolicySpec {
  return memo(policyMemo, c, m, () => computePolicy(m, c));
}

function computePolicy(m: GatewayMethod, c: GatewayConfig): MethodPolicySpec {
  const key = m.grpcPath.slice(1);
  const o = c.methods[key];
  if (!o) return m.declaredPolicy;
  const d = m.declaredPolicy;
  let rateLimit = d.rateLimit;
  if (o.rateLimit === null) rateLimit = undefined;
  else if (o.rateLimit) {
    const requests = o.rateLimit.requests ?? d.rateLimit?.requests ?? 0;
    rateLimit =
      requests > 0
        ? {
            requests,
            periodMs: o.rateLimit.periodMs ?? d.rateLimit?.periodMs ?? 1000,
            burst: o.rateLimit.burst ?? (o.rateLimit.requests !== undefined ? requests : (d.rateLimit?.burst ?? requests)),
            key: o.rateLimit.key ?? d.rateLimit?.key ?? "ip",
          }
        : undefined;
  }
  return {
    auth: o.auth ?? d.auth,
    timeoutMs: o.timeoutMs ?? d.timeoutMs,
    idempotent: o.idempotent ?? d.idempotent,
    rateLimit,
  };
}

/** The breaker for a method: its own when configured, else its upstream's. */
export function effectiveBreaker(
  m: GatewayMethod,
  declared: BreakerSpec,
  c: GatewayConfig,
): { name: string; spec: BreakerSpec } {
  return memo(breakerMemo, c, m, () => computeBreaker(m, declared, c));
}

function computeBreaker(m: GatewayMethod, declared: BreakerSpec, c: GatewayConfig): { name: string; spec: BreakerSpec } {
  const own = c.methods[m.grpcPath.slice(1)]?.breaker;
  const svc = c.services[m.upstream]?.breaker;
  const spec = { ...declared, ...svc, ...own };
  return { name: own ? `${m.upstream}${m.grpcPath}` : m.upstream, spec };
}
