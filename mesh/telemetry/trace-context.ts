// Trace context helpers that need only @opentelemetry/api: carry the active trace (and the
// request id) into message headers and back out, and run work in spans. Cheap to import
// anywhere (mesh/events, the gateway); without a registered SDK they are no-ops that still
// pass on a traceparent that was received.
import {
  context,
  propagation,
  trace,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  type Attributes,
  type Context,
  type Span,
  type SpanOptions,
  type TextMapGetter,
  type TextMapSetter,
} from "@opentelemetry/api";
import { currentRequestId, runWithRequestContext } from "./request-context.js";

export const tracer = () => trace.getTracer("protomesh");

// ---------------------------------------------------------------------------------------
// Trace context in message headers (NATS MsgHdrs, grpc-like maps, or plain records).

/** NATS `MsgHdrs`, a `Headers`, or a plain record of header values. */
export type HeaderCarrier =
  | Record<string, string | string[] | undefined>
  | { get(key: string): unknown; set(key: string, value: string): void; keys?(): Iterable<string> };

function isMapLike(c: HeaderCarrier): c is Extract<HeaderCarrier, { get(key: string): unknown }> {
  return typeof (c as { get?: unknown }).get === "function" && typeof (c as { set?: unknown }).set === "function";
}

function readHeader(carrier: HeaderCarrier, key: string): string | undefined {
  const raw = isMapLike(carrier) ? carrier.get(key) : (carrier[key] ?? carrier[key.toLowerCase()]);
  const value = Array.isArray(raw) ? raw[0] : raw;
  // NATS MsgHdrs.get answers "" for a missing key.
  return typeof value === "string" && value !== "" ? value : undefined;
}

const getter: TextMapGetter<HeaderCarrier> = {
  keys: (c) => (isMapLike(c) ? [...(c.keys?.() ?? [])] : Object.keys(c)),
  get: (c, key) => readHeader(c, key),
};

const setter: TextMapSetter<HeaderCarrier> = {
  set: (c, key, value) => {
    if (isMapLike(c)) c.set(key, value);
    else c[key] = value;
  },
};

export const REQUEST_ID_HEADER = "x-request-id";

/**
 * Write the current trace context (`traceparent`, `tracestate`) and request id
 * (`x-request-id`) into `carrier`, and return it. Call where an event is created (the outbox
 * stores the result with the row) or published.
 */
export function injectTraceparent<C extends HeaderCarrier = Record<string, string>>(
  carrier: C = {} as C,
  ctx: Context = context.active(),
): C {
  propagation.inject(ctx, carrier, setter);
  const requestId = currentRequestId();
  if (requestId && !readHeader(carrier, REQUEST_ID_HEADER)) setter.set(carrier, REQUEST_ID_HEADER, requestId);
  return carrier;
}

/** The W3C traceparent of the active span, if there is one. */
export function currentTraceparent(): string | undefined {
  return injectTraceparent({} as Record<string, string>).traceparent;
}

/**
 * Run `fn` inside the trace context (and request id) carried by `headers`, so spans started
 * and lines logged in `fn` belong to the trace that produced the message.
 */
export function withExtractedContext<T>(headers: HeaderCarrier | undefined, fn: () => T): T {
  if (!headers) return fn();
  // From the root: a message's trace is the one it carries, never whatever happened to be
  // active in the consumer loop.
  const ctx = propagation.extract(ROOT_CONTEXT, headers, getter);
  const requestId = readHeader(headers, REQUEST_ID_HEADER);
  return context.with(ctx, () => (requestId ? runWithRequestContext(requestId, fn) : fn()));
}

/** Run `fn` in a new active span; errors mark the span and are rethrown. */
export async function withSpan<T>(
  name: string,
  options: SpanOptions,
  fn: (span: Span) => Promise<T> | T,
): Promise<T> {
  return tracer().startActiveSpan(name, options, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message });
      throw err;
    } finally {
      span.end();
    }
  });
}

/**
 * Handle one message as a CONSUMER span that continues the producer's trace:
 * `withExtractedContext` + `withSpan` in one call, named `process <subject>`.
 */
export function withConsumerSpan<T>(
  subject: string,
  headers: HeaderCarrier | undefined,
  attributes: Attributes,
  fn: (span: Span) => Promise<T> | T,
): Promise<T> {
  return withExtractedContext(headers, () =>
    withSpan(
      `process ${subject}`,
      { kind: SpanKind.CONSUMER, attributes: { "messaging.system": "nats", "messaging.destination.name": subject, ...attributes } },
      fn,
    ),
  );
}

/** Publish-side span, so the relay's publish shows in the trace as a PRODUCER child. */
export function withProducerSpan<T>(subject: string, attributes: Attributes, fn: (span: Span) => Promise<T> | T): Promise<T> {
  return withSpan(
    `publish ${subject}`,
    { kind: SpanKind.PRODUCER, attributes: { "messaging.system": "nats", "messaging.destination.name": subject, ...attributes } },
    fn,
  );
}

/** Trace and span id of the active span, for log lines. */
export function activeSpanIds(): { trace_id: string; span_id: string } | undefined {
  const sc = trace.getSpanContext(context.active());
  if (!sc || !trace.isSpanContextValid(sc)) return undefined;
  return { trace_id: sc.traceId, span_id: sc.spanId };
}
