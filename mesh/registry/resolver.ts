// A grpc-js name resolver for `mesh:///<service>`: the addresses come from the NATS KV
// registry (registry.ts) and change as instances come and go; calls are balanced
// round-robin across them. Other targets (host:port, dns:///..., ipv4:...) are untouched,
// so Kubernetes deployments can keep using headless-Service DNS.
//
//   registerMeshResolver(nc)                         // once per process, after NATS connects
//   createMeshClient(OrderService, "mesh:///order")  // then any grpc-js channel can use it
import { isIP } from "node:net";
import { lookup } from "node:dns/promises";
import * as grpc from "@grpc/grpc-js";
import type { NatsConnection } from "nats";
import { watchInstances, registryBucket, type InstanceRecord, type InstanceWatch, type ReaderOptions } from "./registry.js";
import { createLogger } from "../telemetry/logger.js";

type GrpcUri = grpc.experimental.GrpcUri;
type ResolverListener = grpc.experimental.ResolverListener;
type Endpoint = grpc.experimental.Endpoint;

export const MESH_SCHEME = "mesh";
const log = createLogger({ module: "mesh-resolver" });
const REANSWER_MS = 1_000;

interface ResolverSetup {
  nc: NatsConnection;
  options: ReaderOptions;
}
let setup: ResolverSetup | undefined;

// One KV watch per service name, shared by every channel that targets it.
interface SharedWatch {
  watch: Promise<InstanceWatch>;
  users: number;
}
const watches = new Map<string, SharedWatch>();

function acquire(name: string): Promise<InstanceWatch> {
  if (!setup) throw new Error("mesh resolver: call registerMeshResolver(nc) before dialing mesh:/// targets");
  let shared = watches.get(name);
  if (!shared) {
    const watch = watchInstances(setup.nc, name, setup.options).then(async (w) => {
      await w.ready;
      return w;
    });
    shared = { watch, users: 0 };
    watches.set(name, shared);
    watch.catch(() => watches.delete(name));
  }
  shared.users++;
  return shared.watch;
}

function release(name: string): void {
  const shared = watches.get(name);
  if (!shared) return;
  if (--shared.users <= 0) {
    watches.delete(name);
    shared.watch.then((w) => w.stop()).catch(() => undefined);
  }
}

function serviceName(target: GrpcUri): string {
  return target.path.replace(/^\/+/, "");
}

/** Round-robin unless the channel's own grpc.service_config already picked a policy. */
function serviceConfigFor(channelOptions: grpc.ChannelOptions): grpc.experimental.StatusOr<any> {
  let config: Record<string, unknown> = {};
  const raw = channelOptions["grpc.service_config"];
  if (typeof raw === "string") {
    try {
      config = JSON.parse(raw);
    } catch {
      config = {};
    }
  }
  return grpc.experimental.statusOrFromValue({
    ...config,
    methodConfig: Array.isArray(config.methodConfig) ? config.methodConfig : [],
    loadBalancingConfig:
      Array.isArray(config.loadBalancingConfig) && config.loadBalancingConfig.length > 0
        ? config.loadBalancingConfig
        : [{ round_robin: {} }],
  });
}

async function toEndpoints(instances: InstanceRecord[]): Promise<Endpoint[]> {
  const endpoints: Endpoint[] = [];
  for (const inst of instances) {
    const hp = grpc.experimental.splitHostPort(inst.address);
    if (!hp || hp.port === undefined) {
      log.warn({ instance: inst.instance, address: inst.address }, "registry record has no host:port address; skipped");
      continue;
    }
    let host = hp.host;
    if (!isIP(host)) {
      try {
        host = (await lookup(host)).address;
      } catch (err) {
        log.warn({ instance: inst.instance, address: inst.address, err: (err as Error).message }, "cannot resolve instance host; skipped");
        continue;
      }
    }
    endpoints.push({ addresses: [{ host, port: hp.port }] });
  }
  return endpoints;
}

class MeshResolver implements grpc.experimental.Resolver {
  private readonly name: string;
  private watch: InstanceWatch | undefined;
  private acquiring: Promise<void> | undefined;
  private unsubscribe: (() => void) | undefined;
  private destroyed = false;
  private lastReportAt = 0;
  private reanswer: NodeJS.Timeout | undefined;

  constructor(
    target: GrpcUri,
    private readonly listener: ResolverListener,
    private readonly channelOptions: grpc.ChannelOptions,
  ) {
    this.name = serviceName(target);
  }

  updateResolution(): void {
    this.destroyed = false;
    if (this.watch) {
      // Changes are pushed by the watch. grpc-js also asks again whenever a connection drops,
      // and answering each ask at once can loop (answer, reconnect fails, ask): re-answer
      // at most once per REANSWER_MS.
      if (this.reanswer) return;
      const wait = Math.max(0, this.lastReportAt + REANSWER_MS - Date.now());
      this.reanswer = setTimeout(() => {
        this.reanswer = undefined;
        if (this.watch) this.report(this.watch.instances());
      }, wait);
      return;
    }
    if (this.acquiring) return;
    let acquired: Promise<InstanceWatch>;
    try {
      acquired = acquire(this.name);
    } catch (err) {
      setImmediate(() => this.fail((err as Error).message));
      return;
    }
    this.acquiring = acquired.then(
      (w) => {
        this.acquiring = undefined;
        if (this.destroyed) {
          release(this.name);
          return;
        }
        this.watch = w;
        this.unsubscribe = w.onChange((instances) => this.report(instances));
        this.report(w.instances());
      },
      (err: Error) => {
        this.acquiring = undefined;
        release(this.name);
        this.fail(`registry watch for "${this.name}" failed: ${err.message}`);
      },
    );
  }

  private fail(details: string): void {
    if (this.destroyed) return;
    this.listener(
      grpc.experimental.statusOrFromError({ code: grpc.status.UNAVAILABLE, details, metadata: new grpc.Metadata() }),
      {},
      null,
      "",
    );
  }

  private report(instances: InstanceRecord[]): void {
    this.lastReportAt = Date.now();
    void toEndpoints(instances).then((endpoints) => {
      if (this.destroyed) return;
      if (endpoints.length === 0) {
        this.fail(`no live instance of "${this.name}" in registry bucket ${registryBucket(setup?.options.bucket)}`);
        return;
      }
      this.listener(grpc.experimental.statusOrFromValue(endpoints), {}, serviceConfigFor(this.channelOptions), "");
    });
  }

  destroy(): void {
    this.destroyed = true;
    clearTimeout(this.reanswer);
    this.reanswer = undefined;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    if (this.watch) {
      this.watch = undefined;
      release(this.name);
    }
  }

  static getDefaultAuthority(target: GrpcUri): string {
    return serviceName(target);
  }
}

/**
 * Make `mesh:///<service>` targets resolvable through the registry in `nc`'s KV bucket.
 * Call once per process; a later call replaces the connection and options for new watches.
 */
export function registerMeshResolver(nc: NatsConnection, options: ReaderOptions = {}): void {
  setup = { nc, options };
  grpc.experimental.registerResolver(MESH_SCHEME, MeshResolver);
}

/** `mesh:///<service>` for a service name. */
export function meshTarget(service: string): string {
  return `${MESH_SCHEME}:///${service}`;
}
