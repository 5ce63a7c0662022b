// Which OpenTelemetry instrumentations (module patching) a process loads. Decided before
// anything is imported, because register.ts registers the ESM loader hook only when one is
// wanted. Imports nothing that loads node:http (the hook must come first).
//
// The only one left is "http": SERVER spans for the gateway's HTTP/1.1 side. gRPC spans are
// made by mesh/server and mesh/client themselves (rpc-telemetry.ts), and the services serve
// no HTTP but /metrics, which is not traced. Enabling the HTTP instrumentation where it
// makes no span is not free: it added ~8 MB of heap to every process (measured with
// bench/telemetry-overhead.ts's worker), so by default only the gateway loads it.
import { serviceIdentity } from "./service-identity.js";

export type InstrumentationName = "http";

/**
 * OTEL_NODE_ENABLED_INSTRUMENTATIONS (comma-separated, the variable OpenTelemetry's Node
 * auto-instrumentation reads; "none" or "" for none) if set; otherwise http in the
 * process named "gateway" (OTEL_SERVICE_NAME, or gateway/main.ts) and nothing elsewhere.
 * Names other than "http" are ignored ("grpc" needs no instrumentation here).
 */
export function enabledInstrumentations(env: NodeJS.ProcessEnv = process.env): Set<InstrumentationName> {
  const listed = env.OTEL_NODE_ENABLED_INSTRUMENTATIONS;
  const names =
    listed !== undefined
      ? listed.split(",").map((s) => s.trim().toLowerCase())
      : serviceIdentity().name === "gateway"
        ? ["http"]
        : [];
  return new Set(names.filter((n): n is InstrumentationName => n === "http"));
}
