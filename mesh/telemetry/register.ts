// The `--import` entry that turns telemetry on for a whole process, before the application
// (and so @grpc/grpc-js) is loaded:
//
//   node --import=tsx --import=./mesh/telemetry/register.ts services/order/main.ts
//
// 1. registers the import-in-the-middle loader hook, in "only hooked modules" mode so only
//    the modules an instrumentation asked for (@grpc/grpc-js, http, ...) are wrapped;
// 2. starts tracing (tracing.ts) with the RPC-metrics span processor;
// 3. starts the /metrics server (METRICS_PORT, else an ephemeral port; METRICS_PORT=off skips).
// PROTOMESH_TELEMETRY=off makes this file do nothing (the bench's "telemetry off" side).
import { register } from "node:module";

const enabled = (process.env.PROTOMESH_TELEMETRY ?? "on").toLowerCase() !== "off";

if (enabled) {
  const { createAddHookMessageChannel } = await import("import-in-the-middle");
  const { registerOptions, waitForAllMessagesAcknowledged } = createAddHookMessageChannel();
  register("@opentelemetry/instrumentation/hook.mjs", import.meta.url, registerOptions);

  const { startTracing } = await import("./tracing.js");
  const { RpcMetricsSpanProcessor, startMetricsServer, collectProcessMetrics } = await import("./metrics.js");
  await startTracing({ spanProcessors: [new RpcMetricsSpanProcessor()] });
  collectProcessMetrics();
  if ((process.env.METRICS_PORT ?? "").toLowerCase() !== "off") {
    const { logger } = await import("./logger.js");
    startMetricsServer().then(
      (m) => logger.info({ metrics_port: m.port }, `metrics at http://127.0.0.1:${m.port}/metrics`),
      (err: Error) => logger.warn({ err: err.message }, `metrics server did not start: ${err.message}`),
    );
  }
  // The loader thread must know every hooked module before the application imports one.
  await waitForAllMessagesAcknowledged();
}
