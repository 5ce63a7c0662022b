// Service discovery over a NATS KV bucket. Each process puts one record under
// `<service>.<instance>` and re-puts it every heartbeat; the bucket's max age (TTL) makes
// the server drop records that stop being refreshed. nats-server 2.9 sends watchers no
// delete when a record ages out, so readers also judge each record by when they last saw
// it refreshed and ignore the stale ones.
import { JSONCodec, type KV, type KvEntry, type NatsConnection } from "nats";
import { serviceIdentity } from "../telemetry/service-identity.js";
import { createLogger } from "../telemetry/logger.js";

export interface InstanceRecord {
  /** Service name, e.g. "order". */
  name: string;
  /** Unique per process. */
  instance: string;
  /** host:port where its gRPC server listens. */
  address: string;
  version: string;
  zone: string;
  /** host:port of its /metrics endpoint, when it serves one. */
  metrics?: string;
  started_at: string;
}

export interface RegistryOptions {
  /** KV bucket name; MESH_REGISTRY_BUCKET or "mesh_registry". Tests use a unique one. */
  bucket?: string;
  /** How often a registration refreshes its record; 2 s. */
  heartbeatMs?: number;
  /** Bucket max age; 3 heartbeats + 1 s by default. Only applies when the bucket is created. */
  ttlMs?: number;
}

export interface ReaderOptions {
  bucket?: string;
  /** A record not refreshed for this long is treated as gone; 3 heartbeats + 1 s (7 s). */
  staleAfterMs?: number;
  /**
   * If every instance is stale, the ones refreshed within this time are still offered
   * (better a maybe-dead address than none); 3 × staleAfterMs.
   */
  forgetAfterMs?: number;
}

const log = createLogger({ module: "registry" });
const codec = JSONCodec<InstanceRecord>();
const KEY_TOKEN = /^[A-Za-z0-9_-]+$/;
const DEFAULT_HEARTBEAT_MS = 2_000;

export function registryBucket(bucket?: string): string {
  return bucket ?? process.env.MESH_REGISTRY_BUCKET ?? "mesh_registry";
}

function defaultStaleAfter(heartbeatMs = DEFAULT_HEARTBEAT_MS): number {
  return heartbeatMs * 3 + 1_000;
}

/** Open (creating when missing) the registry bucket. */
export async function openRegistry(nc: NatsConnection, options: RegistryOptions = {}): Promise<KV> {
  const ttl = options.ttlMs ?? defaultStaleAfter(options.heartbeatMs);
  return nc.jetstream().views.kv(registryBucket(options.bucket), { history: 1, ttl });
}

export interface Registration {
  readonly record: InstanceRecord;
  /** Stop heartbeating and delete the record (a clean shutdown: readers drop it at once). */
  stop(): Promise<void>;
  /** Stop heartbeating but leave the record to age out, as a crashed process would. */
  abandon(): void;
}

function checkToken(field: string, value: string): void {
  if (!KEY_TOKEN.test(value)) throw new Error(`registry: ${field} "${value}" must match ${KEY_TOKEN} (it is part of a KV key)`);
}

/**
 * Register this process: `await registerInstance(nc, { name: "order", address: "10.0.0.5:5003" })`.
 * Name, version and instance default to the process's service identity; zone to MESH_ZONE.
 */
export async function registerInstance(
  nc: NatsConnection,
  record: Partial<InstanceRecord> & { address: string },
  options: RegistryOptions = {},
): Promise<Registration> {
  const id = serviceIdentity();
  const full: InstanceRecord = {
    name: record.name ?? id.name,
    instance: record.instance ?? id.instance,
    address: record.address,
    version: record.version ?? id.version,
    zone: record.zone ?? process.env.MESH_ZONE ?? "local",
    started_at: record.started_at ?? new Date().toISOString(),
    ...(record.metrics ? { metrics: record.metrics } : {}),
  };
  checkToken("name", full.name);
  checkToken("instance", full.instance);
  const kv = await openRegistry(nc, options);
  const key = `${full.name}.${full.instance}`;
  const payload = codec.encode(full);
  await kv.put(key, payload);

  let failing = false;
  const timer = setInterval(() => {
    kv.put(key, payload).then(
      () => {
        if (failing) log.info({ key }, "registry heartbeat recovered");
        failing = false;
      },
      (err: Error) => {
        // NATS may be away for a moment; keep trying, say so once.
        if (!failing) log.warn({ key, err: err.message }, "registry heartbeat failed");
        failing = true;
      },
    );
  }, options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS);
  timer.unref();

  return {
    record: full,
    abandon: () => clearInterval(timer),
    async stop() {
      clearInterval(timer);
      await kv.delete(key).catch(() => undefined);
    },
  };
}

/** A live view of one service's instances. */
export interface InstanceWatch {
  /** The instances seen refreshed within staleAfterMs, sorted by instance id. */
  instances(): InstanceRecord[];
  /** Called whenever the set of live instances (or an address) changes. */
  onChange(listener: (instances: InstanceRecord[]) => void): () => void;
  /** Resolves once the initial values have been read. */
  ready: Promise<void>;
  stop(): Promise<void>;
}

/** Follow the instances of `name`: `const w = await watchInstances(nc, "order")`. */
export async function watchInstances(nc: NatsConnection, name: string, options: ReaderOptions = {}): Promise<InstanceWatch> {
  checkToken("name", name);
  const staleAfterMs = options.staleAfterMs ?? defaultStaleAfter();
  const forgetAfterMs = options.forgetAfterMs ?? staleAfterMs * 3;
  const kv = await openRegistry(nc, { bucket: options.bucket });
  // key -> record and the local time we last saw it refreshed. Local receipt time avoids
  // trusting clocks of other machines; the initial snapshot uses the server's write time.
  const seen = new Map<string, { record: InstanceRecord; at: number }>();
  const listeners = new Set<(instances: InstanceRecord[]) => void>();
  let lastSignature = "";
  let stopped = false;

  const live = (): InstanceRecord[] => {
    const now = Date.now();
    const entries = [...seen.values()];
    let fresh = entries.filter((e) => now - e.at <= staleAfterMs);
    // When every record looks stale, the likelier story is that this process stalled (or
    // lost NATS for a moment) rather than that the whole service died: keep the recent
    // ones (those refreshed around the latest refresh seen) instead of offering no address
    // at all, until forgetAfterMs.
    if (fresh.length === 0) {
      const latest = Math.max(...entries.map((e) => e.at));
      fresh = entries.filter((e) => latest - e.at <= staleAfterMs && now - e.at <= forgetAfterMs);
    }
    return fresh.map((e) => e.record).sort((a, b) => a.instance.localeCompare(b.instance));
  };
  const publish = () => {
    const current = live();
    const signature = current.map((r) => `${r.instance}@${r.address}`).join(",");
    if (signature === lastSignature) return;
    lastSignature = signature;
    for (const l of listeners) l(current);
  };

  let markReady!: () => void;
  const ready = new Promise<void>((r) => (markReady = r));
  let initialized = false;
  const finishInitial = () => {
    if (initialized) return;
    initialized = true;
    publish();
    markReady();
  };
  const iter = await kv.watch({
    key: `${name}.>`,
    // nats.js may call this before the queued initial entries reach the loop below; the
    // loop drains them in microtasks, so a macrotask later they are all in `seen`.
    initializedFn: () => void setTimeout(finishInitial, 0),
  });
  (async () => {
    for await (const entry of iter as AsyncIterable<KvEntry>) {
      if (entry.operation === "DEL" || entry.operation === "PURGE") {
        seen.delete(entry.key);
      } else {
        try {
          const record = codec.decode(entry.value);
          const at = initialized ? Date.now() : Math.min(Date.now(), entry.created.getTime());
          seen.set(entry.key, { record, at });
        } catch (err) {
          log.warn({ key: entry.key, err: (err as Error).message }, "registry: unreadable record ignored");
        }
      }
      if (initialized) publish();
      else if (entry.delta === 0) finishInitial(); // the last of the initial values
    }
  })().catch((err) => {
    if (!stopped) log.warn({ err: (err as Error).message, name }, "registry watch ended");
  });

  // Records that stop being refreshed expire silently: re-check ages on a timer.
  const sweep = setInterval(publish, Math.max(100, Math.floor(staleAfterMs / 4)));
  sweep.unref();

  return {
    instances: live,
    ready,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async stop() {
      stopped = true;
      clearInterval(sweep);
      iter.stop();
      listeners.clear();
    },
  };
}

/** One-shot read of the live instances of `name`. */
export async function listInstances(nc: NatsConnection, name: string, options: ReaderOptions = {}): Promise<InstanceRecord[]> {
  const watch = await watchInstances(nc, name, options);
  await watch.ready;
  const out = watch.instances();
  await watch.stop();
  return out;
}

/** The address other processes should dial: ADVERTISE_HOST (the pod IP in Kubernetes), else 127.0.0.1. */
export function advertisedAddress(port: number): string {
  return `${process.env.ADVERTISE_HOST ?? "127.0.0.1"}:${port}`;
}
