/**
 * Runtime overrides from a NATS KV bucket, applied while the process runs: rate limits,
 * breaker thresholds, timeouts, log level. The environment (mesh/config.ts) fixes how a
 * process starts; this changes how it behaves, within a second of a `nats kv put`.
 *
 * Keys are `<family>` or `<family>.<name>`: `log_level`, `log_level.order`,
 * `timeout_ms.shop.order.v1.OrderService.PlaceOrder`, `breaker.order`, `rate_limit.order`.
 * A family is declared once with a mesh/config Setting (how to parse the text, the fallback).
 * `get(family, name)` answers the most specific key present, walking the name's dotted
 * prefixes up to the bare family, then the fallback; object-valued families (partialObject)
 * merge that chain, general first, so `breaker` can set errorPercent for every upstream and
 * `breaker.order` only openForMs for one.
 *
 * A value that does not parse is rejected with one warn line naming the key and the problem;
 * the previous value stays in force.
 *
 *   const live = await startLiveConfig(nc, meshLiveSettings);   // also follows log_level
 *   live.get("timeout_ms", "shop.order.v1.OrderService.PlaceOrder")   // number | undefined
 *   live.subscribe("breaker", (change) => breakers.reset(change.name))
 *   await putLiveValue(nc, "breaker.order", { errorPercent: 30 })     // ops, tests
 */
import type { KV, KvEntry, NatsConnection } from "nats";
import { Invalid, oneOf, LOG_LEVELS, type Setting } from "./config.js";
import { createLogger, setLogLevel, type LogLevel, type Logger } from "./telemetry/logger.js";
import { serviceIdentity } from "./telemetry/service-identity.js";

/** A Setting that may also say how a general value and a more specific one combine. */
export type LiveSetting<T> = Setting<T> & { merge?(general: T, specific: T): T };
export type LiveSpec = Record<string, LiveSetting<any>>;
export type LiveValue<S extends LiveSpec, F extends keyof S> = S[F] extends Setting<infer T> ? T : never;

export interface LiveChange<T> {
  /** The KV key that changed. */
  key: string;
  family: string;
  /** The part after the family ("" for the bare family key). */
  name: string;
  /** The effective value for `name` now, and before. */
  value: T;
  previous: T;
  /** "put" for a new value, "delete" when the override went away. */
  op: "put" | "delete";
}

export interface LiveConfig<S extends LiveSpec> {
  get<F extends keyof S & string>(family: F, name?: string): LiveValue<S, F>;
  /** Called after every accepted change in `family`. Returns an unsubscribe function. */
  subscribe<F extends keyof S & string>(family: F, listener: (change: LiveChange<LiveValue<S, F>>) => void): () => void;
  /** The accepted overrides by key, as parsed values. */
  overrides(): Record<string, unknown>;
  readonly bucket: string;
  stop(): Promise<void>;
}

export interface LiveConfigOptions {
  /** KV bucket; MESH_CONFIG_BUCKET or "mesh_config". Tests use a unique one. */
  bucket?: string;
  /** Follow `log_level` / `log_level.<service>` with the process logger; on when the spec has log_level. */
  applyLogLevel?: boolean;
  /** Service name for `log_level.<service>`; the process's identity by default. */
  service?: string;
  /** Where accept/reject lines go; a child of the process logger by default. */
  logger?: Logger;
}

const KEY = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;

export function liveConfigBucket(bucket?: string): string {
  return bucket ?? process.env.MESH_CONFIG_BUCKET ?? "mesh_config";
}

/**
 * The config bucket of a process under a NATS subject prefix: MESH_CONFIG_BUCKET, else one
 * per prefix (a test run reads its own overrides, never the shop's beside it), else the
 * shared "mesh_config".
 */
export function liveConfigBucketFor(subjectPrefix: string): string {
  if (process.env.MESH_CONFIG_BUCKET) return process.env.MESH_CONFIG_BUCKET;
  if (!subjectPrefix) return "mesh_config";
  return `${subjectPrefix.replace(/\.$/, "").toUpperCase().replace(/[^A-Z0-9]+/g, "_")}_MESH_CONFIG`;
}

export async function openLiveConfigBucket(nc: NatsConnection, bucket?: string): Promise<KV> {
  return nc.jetstream().views.kv(liveConfigBucket(bucket), { history: 5 });
}

function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function splitKey(key: string): { family: string; name: string } {
  const dot = key.indexOf(".");
  return dot < 0 ? { family: key, name: "" } : { family: key.slice(0, dot), name: key.slice(dot + 1) };
}

/** "" and the dotted prefixes of `name`, general first: "", "a", "a.b", "a.b.c". */
function chain(name: string): string[] {
  const out = [""];
  if (!name) return out;
  const parts = name.split(".");
  for (let i = 1; i <= parts.length; i++) out.push(parts.slice(0, i).join("."));
  return out;
}

/** Start following the bucket. Resolves once the values already stored are applied. */
export async function startLiveConfig<S extends LiveSpec>(
  nc: NatsConnection,
  spec: S,
  options: LiveConfigOptions = {},
): Promise<LiveConfig<S>> {
  for (const family of Object.keys(spec)) {
    if (!/^[A-Za-z0-9_-]+$/.test(family)) throw new Error(`live config: family "${family}" must be one key token (no dots)`);
  }
  const bucket = liveConfigBucket(options.bucket);
  const log = options.logger ?? createLogger({ module: "live-config" });
  const kv = await openLiveConfigBucket(nc, bucket);
  // family -> name -> parsed value
  const values = new Map<string, Map<string, unknown>>();
  const listeners = new Map<string, Set<(change: LiveChange<any>) => void>>();
  const decoder = new TextDecoder();

  function effective(family: string, name: string): unknown {
    const setting = spec[family]!;
    const byName = values.get(family);
    let value: unknown = setting.fallback;
    for (const prefix of chain(name)) {
      if (!byName?.has(prefix)) continue;
      const v = byName.get(prefix);
      value = setting.merge ? setting.merge(value, v) : v;
    }
    return value;
  }

  function apply(entry: KvEntry): void {
    const { family, name } = splitKey(entry.key);
    const setting = spec[family];
    if (!setting) return; // a family this process does not use
    const previous = effective(family, name);
    let op: LiveChange<unknown>["op"];
    if (entry.operation === "DEL" || entry.operation === "PURGE") {
      if (!values.get(family)?.delete(name)) return;
      op = "delete";
      log.info({ key: entry.key }, `live config: ${entry.key} removed, back to the default`);
    } else {
      const raw = decoder.decode(entry.value).trim();
      const parsed = setting.parse(raw);
      if (parsed instanceof Invalid) {
        log.warn(
          { key: entry.key, value: clip(raw), revision: entry.revision },
          `live config: rejected ${entry.key}: must be ${parsed.reason ?? setting.expected}, got ${JSON.stringify(clip(raw))}; keeping ${JSON.stringify(values.get(family)?.get(name) ?? "the default")}`,
        );
        return;
      }
      if (!values.has(family)) values.set(family, new Map());
      values.get(family)!.set(name, parsed);
      op = "put";
      log.info({ key: entry.key, value: clip(raw), revision: entry.revision }, `live config: ${entry.key} = ${clip(raw)}`);
    }
    const change: LiveChange<unknown> = { key: entry.key, family, name, value: effective(family, name), previous, op };
    for (const l of listeners.get(family) ?? []) {
      try {
        l(change);
      } catch (err) {
        log.error({ key: entry.key, err: (err as Error).message }, "live config: a subscriber failed");
      }
    }
  }

  let markReady!: () => void;
  const ready = new Promise<void>((r) => (markReady = r));
  let initialized = false;
  const finishInitial = () => {
    if (!initialized) {
      initialized = true;
      markReady();
    }
  };
  const iter = await kv.watch({
    // nats.js may call this before the queued initial entries reach the loop below; they are
    // drained in microtasks, so a macrotask later they have all been applied.
    initializedFn: () => void setTimeout(finishInitial, 0),
  });
  let stopped = false;
  (async () => {
    for await (const entry of iter as AsyncIterable<KvEntry>) {
      if (KEY.test(entry.key)) apply(entry);
      if (!initialized && entry.delta === 0) finishInitial();
    }
  })().catch((err) => {
    if (!stopped) log.error({ err: (err as Error).message, bucket }, "live config: watch ended; values are frozen");
  });

  const live: LiveConfig<S> = {
    bucket,
    get: (family, name = "") => effective(family, name) as never,
    subscribe(family, listener) {
      if (!spec[family]) throw new Error(`live config: unknown family "${family}"`);
      if (!listeners.has(family)) listeners.set(family, new Set());
      listeners.get(family)!.add(listener as (change: LiveChange<any>) => void);
      return () => listeners.get(family)?.delete(listener as (change: LiveChange<any>) => void);
    },
    overrides() {
      const out: Record<string, unknown> = {};
      for (const [family, byName] of values) for (const [name, v] of byName) out[name ? `${family}.${name}` : family] = v;
      return out;
    },
    async stop() {
      stopped = true;
      iter.stop();
      listeners.clear();
    },
  };

  await ready;

  if ((options.applyLogLevel ?? true) && spec.log_level) {
    const service = options.service ?? serviceIdentity().name;
    const follow = () => {
      const level = live.get("log_level" as keyof S & string, service) as unknown;
      if (typeof level === "string") setLogLevel(level as LogLevel);
    };
    live.subscribe("log_level" as keyof S & string, follow);
    if (values.has("log_level")) follow();
  }
  return live;
}

/** Write an override (ops tooling and tests). Objects are stored as JSON, the rest as text. */
export async function putLiveValue(nc: NatsConnection, key: string, value: unknown, bucket?: string): Promise<number> {
  if (!KEY.test(key)) throw new Error(`live config: key "${key}" must be dot-separated tokens of [A-Za-z0-9_-]`);
  const kv = await openLiveConfigBucket(nc, bucket);
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return kv.put(key, new TextEncoder().encode(text));
}

export async function deleteLiveValue(nc: NatsConnection, key: string, bucket?: string): Promise<void> {
  const kv = await openLiveConfigBucket(nc, bucket);
  await kv.delete(key);
}

// ---- setting builders for structured and optional values ------------------------------

export interface FieldRule {
  min?: number;
  max?: number;
  /** Whole numbers only (the default). */
  integer?: boolean;
}

/**
 * A JSON object whose keys are among `fields`, each a number within its rule. The value is
 * a Partial: the caller merges it onto its own defaults. The rejection names the field.
 */
export function partialObject<K extends string>(fields: Record<K, FieldRule>, doc = ""): LiveSetting<Partial<Record<K, number>>> {
  const names = Object.keys(fields) as K[];
  const expected = `a JSON object with any of ${names.join(", ")}`;
  return {
    expected,
    doc,
    optional: true,
    defaultText: "{}",
    fallback: {},
    merge: (general, specific) => ({ ...general, ...specific }),
    parse(raw) {
      let obj: unknown;
      try {
        obj = JSON.parse(raw);
      } catch {
        return new Invalid(`${expected} (not JSON)`);
      }
      if (typeof obj !== "object" || obj === null || Array.isArray(obj)) return new Invalid(expected);
      const out: Partial<Record<K, number>> = {};
      for (const [k, v] of Object.entries(obj)) {
        // Own keys only: "constructor" or "toString" would find Object.prototype's.
        const rule = Object.hasOwn(fields, k) ? fields[k as K] : undefined;
        if (!rule) return new Invalid(`${expected}; "${k}" is not one of them`);
        const integer = rule.integer ?? true;
        const within = `${integer ? "an integer" : "a number"}${rule.min !== undefined || rule.max !== undefined ? ` in [${rule.min ?? "…"}, ${rule.max ?? "…"}]` : ""}`;
        if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
          return new Invalid(`"${k}" ${within}`);
        }
        if ((rule.min !== undefined && v < rule.min) || (rule.max !== undefined && v > rule.max)) return new Invalid(`"${k}" ${within}`);
        out[k as K] = v;
      }
      return out;
    },
  };
}

/** An integer in [min, max], or undefined when no key sets it (the caller's own default applies). */
export function optionalInteger(min: number, max: number, doc = ""): LiveSetting<number | undefined> {
  return {
    expected: `an integer in [${min}, ${max}]`,
    doc,
    optional: true,
    defaultText: undefined,
    fallback: undefined,
    parse(raw) {
      if (!/^-?\d+$/.test(raw)) return new Invalid();
      const n = Number(raw);
      return n >= min && n <= max ? n : new Invalid();
    },
  };
}

const initialLevel = (LOG_LEVELS as readonly string[]).includes(process.env.LOG_LEVEL ?? "") ? (process.env.LOG_LEVEL as (typeof LOG_LEVELS)[number]) : "info";

/**
 * The families the mesh itself understands. The gateway and services spread this into
 * their own spec: `startLiveConfig(nc, { ...meshLiveSettings, my_family: ... })`.
 */
export const meshLiveSettings = {
  /** `log_level` for every process, `log_level.<service>` for one. */
  log_level: oneOf(LOG_LEVELS, initialLevel, "Minimum level of the JSON logs"),
  /** Milliseconds; `timeout_ms.<package.Service>` or `timeout_ms.<package.Service>.<Method>`. */
  timeout_ms: optionalInteger(1, 600_000, "Deadline of an upstream call"),
  /** Over the method's own limit: `rate_limit.<package.Service>.<Method>` or `rate_limit.<upstream>`. */
  rate_limit: partialObject(
    { requests: { min: 0, max: 1_000_000 }, periodMs: { min: 1, max: 86_400_000 }, burst: { min: 0, max: 1_000_000 } },
    "Token bucket: requests per periodMs, burst",
  ),
  /** `breaker` for every upstream, `breaker.<upstream>` for one. */
  breaker: partialObject(
    {
      windowMs: { min: 100, max: 3_600_000 },
      minRequests: { min: 1, max: 1_000_000 },
      errorPercent: { min: 1, max: 100 },
      openForMs: { min: 10, max: 3_600_000 },
      halfOpenProbes: { min: 1, max: 1_000 },
    },
    "Circuit breaker thresholds",
  ),
} satisfies LiveSpec;

export type MeshLiveConfig = LiveConfig<typeof meshLiveSettings>;
