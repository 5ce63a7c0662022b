// The two lines a service main.ts needs to take part in discovery: make `mesh:///<name>`
// dialable from this process, and put this process in the registry (with the address of its
// /metrics endpoint, so a scraper can find every replica the same way).
//
//   await joinMesh(nc, { name: "order", port: server.port });   // returns the Registration
//   shutdown.add("registry", () => registration.stop());          // leave before draining
import type { NatsConnection } from "nats";
import { advertisedAddress, registerInstance, type Registration, type RegistryOptions } from "./registry.js";
import { registerMeshResolver } from "./resolver.js";
import { metricsServer } from "../telemetry/metrics.js";

export interface JoinOptions extends RegistryOptions {
  /** Service name; the process's identity by default. */
  name?: string;
  /** The gRPC port this process listens on. */
  port: number;
  zone?: string;
  version?: string;
  /** Reader-side stale age for the resolver; see ReaderOptions.staleAfterMs. */
  staleAfterMs?: number;
}

export async function joinMesh(nc: NatsConnection, options: JoinOptions): Promise<Registration> {
  registerMeshResolver(nc, { bucket: options.bucket, staleAfterMs: options.staleAfterMs });
  const metrics = await metricsServer()?.catch(() => undefined);
  return registerInstance(
    nc,
    {
      name: options.name,
      address: advertisedAddress(options.port),
      zone: options.zone,
      version: options.version,
      ...(metrics ? { metrics: advertisedAddress(metrics.port) } : {}),
    },
    options,
  );
}
