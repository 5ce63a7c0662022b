// One call or statement that serves several callers, each in a trace of its own (a coalesced
// batch call, a consumer's batch of events): it can belong to one trace only, so it runs in
// the first caller's, in a span of its own linked to every other caller's span, and each
// caller's trace still leads to it. Shared by mesh/coalesce.ts and mesh/events/consumer.ts.
import { context as otelContext, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Link } from "@opentelemetry/api";
import { runWithTraceContext } from "../call-context.js";

/**
 * Runs `fn` for a batch whose callers ran in `traces` (mesh call-context trace contexts,
 * first caller first): in the first one's trace, inside a span `name` linked to the others'
 * spans, with `protomesh.batch.size`. One caller, or no trace to join or link (no tracing set
 * up): `fn` runs in the first caller's context, adding no span.
 */
export function runInBatchSpan<T>(name: string, traces: readonly unknown[], attributes: Attributes, fn: () => Promise<T>): Promise<T> {
  const first = traces[0];
  if (traces.length <= 1) return runWithTraceContext(first, fn);
  // The OpenTelemetry context each caller ran in (the context manager resolves a deferred one).
  const contextOf = (t: unknown): Context => runWithTraceContext(t, () => otelContext.active());
  const links: Link[] = [];
  for (let i = 1; i < traces.length; i++) {
    const linked = trace.getSpanContext(contextOf(traces[i]));
    if (linked && trace.isSpanContextValid(linked)) links.push({ context: linked });
  }
  const parent = contextOf(first);
  const parentSpan = trace.getSpanContext(parent);
  if (links.length === 0 && !(parentSpan && trace.isSpanContextValid(parentSpan))) return runWithTraceContext(first, fn);
  const span = trace
    .getTracer("protomesh/batch")
    .startSpan(name, { kind: SpanKind.INTERNAL, links, attributes: { ...attributes, "protomesh.batch.size": traces.length } }, parent);
  return runWithTraceContext(trace.setSpan(parent, span), fn).then(
    (value) => {
      span.end();
      return value;
    },
    (err: unknown) => {
      span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
      span.end();
      throw err;
    },
  );
}
