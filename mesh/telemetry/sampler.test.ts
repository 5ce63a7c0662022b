// Every span is recorded (so RPC metrics and log ids work), but only sampled traces are
// exported: a caller that sent an unsampled traceparent stays unsampled downstream.
import test from "ava";
import { context, propagation, trace } from "@opentelemetry/api";
import type { ReadableSpan, SpanProcessor } from "@opentelemetry/sdk-trace-base";
import { startTracing, type TracingHandle } from "./tracing.js";

const seen: ReadableSpan[] = [];
const recorder: SpanProcessor = {
  onStart() {},
  onEnd: (span) => void seen.push(span),
  forceFlush: async () => {},
  shutdown: async () => {},
};
let tracing: TracingHandle;

test.before(async () => {
  tracing = await startTracing({ exporter: "memory", instrumentations: [], spanProcessors: [recorder] });
});

function spanUnder(traceparent: string | undefined, name: string): void {
  const parent = traceparent ? propagation.extract(context.active(), { traceparent }) : context.active();
  trace.getTracer("test").startSpan(name, {}, parent).end();
}

test("sampled and root spans are exported; a span under an unsampled parent is recorded only", (t) => {
  spanUnder(undefined, "root");
  spanUnder("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "sampled-child");
  spanUnder("00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", "unsampled-child");
  const exported = tracing.finishedSpans().map((s) => s.name);
  t.deepEqual(exported.sort(), ["root", "sampled-child"]);
  t.deepEqual(seen.map((s) => s.name).sort(), ["root", "sampled-child", "unsampled-child"], "metrics still see every span");
  const unsampled = seen.find((s) => s.name === "unsampled-child")!;
  t.is(unsampled.spanContext().traceId, "1af7651916cd43dd8448eb211c80319c", "it keeps the caller's trace id");
});
