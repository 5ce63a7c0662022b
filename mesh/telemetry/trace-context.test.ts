// Trace context across NATS: the producer writes traceparent (and x-request-id) into the
// message headers, the consumer continues the trace. Real NATS, a unique subject per run.
import test from "ava";
import { randomBytes } from "node:crypto";
import { connect, headers as natsHeaders, type NatsConnection } from "nats";
import { trace, SpanKind } from "@opentelemetry/api";
import {
  startTracing,
  injectTraceparent,
  withExtractedContext,
  withConsumerSpan,
  withProducerSpan,
  currentTraceparent,
  activeSpanIds,
  type TracingHandle,
} from "./tracing.js";
import { runWithRequestContext, currentRequestId } from "./request-context.js";

let nc: NatsConnection;
let tracing: TracingHandle;
const subject = `test.trace.${randomBytes(4).toString("hex")}`;

test.before(async () => {
  tracing = await startTracing({ exporter: "memory", instrumentations: [] });
  nc = await connect({ servers: process.env.NATS_URL ?? "127.0.0.1:4222" });
});
test.after.always(() => nc?.close());

test.serial("a message published inside a request is handled in the same trace, as a child of the publish", async (t) => {
  const received = new Promise<{ traceId?: string; parent?: string; requestId?: string }>((resolve) => {
    const sub = nc.subscribe(subject, { max: 1 });
    (async () => {
      for await (const m of sub) {
        const seen = await withConsumerSpan(m.subject, m.headers, { "messaging.consumer.group.name": "test" }, async (span) => ({
          traceId: span.spanContext().traceId,
          parent: activeSpanIds()?.span_id,
          requestId: currentRequestId(),
        }));
        resolve(seen); // after the consumer span ended
      }
    })();
  });

  const producer = await runWithRequestContext("req-evt", () =>
    trace.getTracer("test").startActiveSpan("place order", async (root) => {
      const published = await withProducerSpan(subject, {}, async (span) => {
        const h = injectTraceparent(natsHeaders());
        nc.publish(subject, new Uint8Array(), { headers: h });
        return span.spanContext();
      });
      root.end();
      return published;
    }),
  );
  const got = await received;
  t.is(got.traceId, producer.traceId);
  t.is(got.requestId, "req-evt");
  const consumer = tracing.finishedSpans().find((s) => s.name === `process ${subject}`)!;
  t.is(consumer.kind, SpanKind.CONSUMER);
  t.is(consumer.parentSpanContext?.spanId, producer.spanId, "the consumer span is a child of the publish span");
  t.is(consumer.attributes["messaging.destination.name"], subject);
});

test.serial("an outbox row can carry the traceparent as text and the relay restores it later", async (t) => {
  let stored: Record<string, string> = {};
  const origin = await runWithRequestContext("req-outbox", () =>
    trace.getTracer("test").startActiveSpan("write order", (span) => {
      stored = injectTraceparent(); // what the outbox keeps in its headers column
      span.end();
      return span.spanContext();
    }),
  );
  t.regex(stored.traceparent!, new RegExp(`^00-${origin.traceId}-${origin.spanId}-01$`));
  t.is(stored["x-request-id"], "req-outbox");
  t.is(currentTraceparent(), undefined, "outside any span there is none");

  // Later, elsewhere (the relay): the context comes back from the stored headers.
  const restored = withExtractedContext(stored, () => ({ tp: currentTraceparent(), rid: currentRequestId() }));
  t.is(restored.tp, stored.traceparent);
  t.is(restored.rid, "req-outbox");
  t.is(withExtractedContext(undefined, () => currentTraceparent()), undefined);
});
