// mesh/coalesce with tracing on: a batch of several callers' calls is one span in the first
// caller's trace, linked to every other caller's span, so each order's trace still leads to
// the batch call that carried it. (Its own file: startTracing installs process-wide providers.)
import test from 'ava';
import { context, trace, type SpanContext } from '@opentelemetry/api';
import { startTracing, type TracingHandle } from './telemetry/tracing.js';
import { Coalescer } from './coalesce.js';

let tracing: TracingHandle;
test.before(async () => {
  tracing = await startTracing({ exporter: 'memory', instrumentations: [] });
});
test.after.always(() => tracing?.shutdown());

test('a batch is a span in its first caller trace, linked to the other callers; a lone call adds no span', async (t) => {
  const tracer = trace.getTracer('coalesce-test');
  const seenBy = new Map<string, SpanContext | undefined>();
  let release!: () => void;
  const c = new Coalescer<string, string>({
    name: 'Reserve',
    sendOne: async (id) => {
      seenBy.set(id, trace.getSpanContext(context.active()));
      if (id === 'a') await new Promise<void>((r) => (release = r));
      return id;
    },
    sendBatch: async (ids) => {
      for (const id of ids) seenBy.set(id, trace.getSpanContext(context.active()));
      return ids;
    },
  });
  // Each caller in a span of its own, as three sagas would be.
  const callers = new Map<string, SpanContext>();
  const call = (id: string) =>
    tracer.startActiveSpan(`saga ${id}`, async (span) => {
      callers.set(id, span.spanContext());
      try {
        return await c.call(id);
      } finally {
        span.end();
      }
    });
  const first = call('a');
  const batched = [call('b'), call('c'), call('d')];
  release();
  t.deepEqual(await Promise.all([first, ...batched]), ['a', 'b', 'c', 'd']);

  const spans = tracing.finishedSpans().filter((s) => s.name.startsWith('coalesce '));
  t.is(spans.length, 1, 'one span for the batch, none for the lone call');
  const batch = spans[0]!;
  t.is(batch.name, 'coalesce Reserve');
  t.is(batch.attributes['protomesh.batch.size'], 3);
  t.is(batch.spanContext().traceId, callers.get('b')!.traceId, "in the first batched caller's trace");
  t.is(batch.parentSpanContext?.spanId ?? (batch as unknown as { parentSpanId?: string }).parentSpanId, callers.get('b')!.spanId);
  t.deepEqual(
    batch.links.map((l) => l.context.spanId).sort(),
    [callers.get('c')!.spanId, callers.get('d')!.spanId].sort(),
    'linked to the other callers',
  );
  t.is(seenBy.get('c')?.spanId, batch.spanContext().spanId, 'the batch call runs inside the batch span');
  t.is(seenBy.get('a')?.spanId, callers.get('a')!.spanId, "the lone call runs in its caller's span");
});
