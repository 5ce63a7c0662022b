// mesh/events consumers with tracing on: the new events of a batch given to handleBatch keep
// a CONSUMER span each, in the trace that published them; the batch runs in a span of the
// first event's trace linked to the others' (as mesh/coalesce.ts does for a batch call), and
// inTrace runs code in its event's span. (Its own file: startTracing installs process-wide providers.)
import test from "ava";
import { create } from "@bufbuild/protobuf";
import { context, SpanKind, trace, type SpanContext } from "@opentelemetry/api";
import { OrderConfirmedSchema } from "../../gen/shop/order/v1/order_pb.js";
import { startTracing, type TracingHandle } from "../telemetry/tracing.js";
import { injectTraceparent } from "../telemetry/trace-context.js";
import { startConsumer } from "./consumer.js";
import { eventSubject, packageStream } from "./naming.js";
import { publishEvent } from "./publisher.js";
import { ensureStreams } from "./streams.js";
import { createEventsTables, createEventsTestEnv, eventsSchema, eventually, type EventsSchema, type EventsTestEnv } from "./test-support.js";

let tracing: TracingHandle;
let env: EventsTestEnv;
let s: EventsSchema;
test.before(async () => {
  tracing = await startTracing({ exporter: "memory", instrumentations: [] });
  env = await createEventsTestEnv();
  await ensureStreams(env.jsm, [packageStream("shop.order.v1", env.prefix)], { prefix: env.prefix, storage: "memory" });
  s = eventsSchema("consumer_tracing");
  await createEventsTables(env.db, s);
});
test.after.always(async () => {
  await env?.close();
  await tracing?.shutdown();
});

const parentOf = (span: { parentSpanContext?: SpanContext }) => span.parentSpanContext?.spanId;

test("a batch's events keep their own CONSUMER spans and traces; the batch is a span in the first one's trace, linked to the others", async (t) => {
  const name = "traced-batch";
  const tracer = trace.getTracer("consumer-tracing-test");
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const inTraceSaw = new Map<string, SpanContext | undefined>();
  let batchSaw: SpanContext | undefined;
  const c = await startConsumer({
    name,
    event: OrderConfirmedSchema,
    db: env.db,
    inbox: s.inbox,
    js: env.js,
    prefix: env.prefix,
    deliverPolicy: "new",
    handler: async (_tx, ev) => {
      if (ev.orderId === "gate") await gate;
    },
    handleBatch: async (_tx, events) => {
      batchSaw = trace.getSpanContext(context.active());
      for (const e of events) inTraceSaw.set(e.event.orderId, e.inTrace(() => trace.getSpanContext(context.active())));
    },
  });
  t.teardown(() => c.stop());

  // Each event published from a span of its own, as three orders' transactions would be.
  const producers = new Map<string, SpanContext>();
  const publish = (orderId: string) =>
    tracer.startActiveSpan(`place ${orderId}`, async (span) => {
      producers.set(orderId, span.spanContext());
      try {
        await publishEvent(env.js, OrderConfirmedSchema, create(OrderConfirmedSchema, { orderId, userId: "u1" }), {
          prefix: env.prefix,
          headers: injectTraceparent({}),
        });
      } finally {
        span.end();
      }
    });
  await publish("gate");
  await eventually("the gate event in its handler", () => c.stats().inFlight === 1);
  const ids = ["t-1", "t-2", "t-3"];
  for (const id of ids) await publish(id);
  await eventually("three events queued behind the gate", () => c.stats().queued === 3);
  open();
  await eventually("all handled", () => c.stats().handled === 4);

  const subject = eventSubject(OrderConfirmedSchema.typeName, env.prefix);
  const spans = tracing.finishedSpans();
  const consumerSpan = (orderId: string) => {
    const found = spans.filter((sp) => sp.name === `process ${subject}` && sp.spanContext().traceId === producers.get(orderId)!.traceId);
    t.is(found.length, 1, `one CONSUMER span in ${orderId}'s trace`);
    t.is(found[0]!.kind, SpanKind.CONSUMER);
    t.is(parentOf(found[0]!), producers.get(orderId)!.spanId, `a child of the span that published ${orderId}`);
    return found[0]!.spanContext();
  };
  consumerSpan("gate");
  const consumed = ids.map(consumerSpan);
  ids.forEach((id, i) => t.is(inTraceSaw.get(id)?.spanId, consumed[i]!.spanId, `inTrace runs in ${id}'s CONSUMER span`));

  const batches = spans.filter((sp) => sp.name === `batch ${name}`);
  t.is(batches.length, 1, "one batch span; the lone gate event has none");
  const batch = batches[0]!;
  t.is(batch.kind, SpanKind.INTERNAL);
  t.is(batch.attributes["protomesh.batch.size"], 3);
  t.is(batch.spanContext().traceId, consumed[0]!.traceId, "in the first event's trace");
  t.is(parentOf(batch), consumed[0]!.spanId, "under the first event's CONSUMER span");
  t.deepEqual(batch.links.map((l) => l.context.spanId).sort(), [consumed[1]!.spanId, consumed[2]!.spanId].sort(), "linked to the others");
  t.is(batchSaw?.spanId, batch.spanContext().spanId, "handleBatch runs inside the batch span");
});
