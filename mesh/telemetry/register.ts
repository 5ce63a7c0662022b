// The `--import` entry that turns telemetry on for a whole process, before the application
// is loaded:
//
//   node --import=tsx --import=./mesh/telemetry/register.ts services/order/main.ts
//
// 1. registers the import-in-the-middle loader hook, in "only hooked modules" mode so only
//    the modules an instrumentation asked for are wrapped, when one is enabled
//    (enabled-instrumentations.ts: http, in the gateway by default);
// 2. starts tracing (tracing.ts), which installs the gRPC spans and RPC metrics that
//    mesh/server and mesh/client make themselves (rpc-telemetry.ts; no grpc-js patching);
// 3. starts the /metrics server (METRICS_PORT, else an ephemeral port; METRICS_PORT=off skips).
// PROTOMESH_TELEMETRY=off makes this file do nothing (the bench's "telemetry off" side).
import { register } from "node:module";

const enabled = (process.env.PROTOMESH_TELEMETRY ?? "on").toLowerCase() !== "off";

if (enabled) {
  // The loader hook only where an instrumentation will patch a module (the gateway's http).
  const { enabledInstrumentations } = await import("./enabled-instrumentations.js");
  let hooked: (() => Promise<void>) | undefined;
  if (enabledInstrumentations().size > 0) {
    const { createAddHookMessageChannel } = await import("import-in-the-middle");
    const { registerOptions, waitForAllMessagesAcknowledged } = createAddHookMessageChannel();
    register("@opentelemetry/instrumentation/hook.mjs", import.meta.url, registerOptions);
    hooked = waitForAllMessagesAcknowledged;
  }

  const { startTracing } = await import("./tracing.js");
  const { startMetricsServer, collectProcessMetrics } = await import("./metrics.js");
  await startTracing();
  collectProcessMetrics();
  if ((process.env.METRICS_PORT ?? "").toLowerCase() !== "off") {
    const { logger } = await import("./logger.js");
    startMetricsServer().then(
      (m) => logger.info({ metrics_port: m.port }, `metrics at http://127.0.0.1:${m.port}/metrics`),
      (err: Error) => logger.warn({ err: err.message }, `metrics server did not start: ${err.message}`),
    );
  }
  // The loader thread must know every hooked module before the application imports one.
  await hooked?.();
}
