// OpenTelemetry tracing for a mesh process: the tracer provider, the gRPC and HTTP
// instrumentations, the exporter choice, and the helpers that carry trace context across
// NATS. Started by register.ts (loaded with `--import`) before @grpc/grpc-js is imported,
// because the instrumentation can only patch a module that has not been loaded yet.
//
// Cost model: with no OTLP endpoint nothing is exported (no span processor that does I/O),
// but spans are still created so trace ids reach logs, metadata and event headers, and the
// RPC duration metrics (metrics.ts) are read off the finished spans.
import {
  context,
  propagation,
  trace,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  type Attributes,
  type Context,
  type Span,
  type SpanOptions,
  type TextMapGetter,
  type TextMapSetter,
} from "@opentelemetry/api";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import {
  BatchSpanProcessor,
  ConsoleSpanExporter,
  InMemorySpanExporter,
  SamplingDecision,
  SimpleSpanProcessor,
  type ReadableSpan,
  type Sampler,
  type SamplingResult,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from "@opentelemetry/semantic-conventions";
import { registerInstrumentations, type Instrumentation } from "@opentelemetry/instrumentation";
import { GrpcInstrumentation } from "@opentelemetry/instrumentation-grpc";
import { HttpInstrumentation } from "@opentelemetry/instrumentation-http";
import { serviceIdentity } from "./service-identity.js";
import { currentRequestId, runWithRequestContext } from "./request-context.js";

/** otlp: OTLP/HTTP protobuf; file: JSON lines in OTEL_TRACES_FILE_DIR (tests); memory: in-process (tests). */
export type TraceExporterKind = "otlp" | "console" | "memory" | "file" | "none";

export interface TracingOptions {
  serviceName?: string;
  serviceVersion?: string;
  /** Default: OTEL_TRACES_EXPORTER, else "otlp" when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, else "none". */
  exporter?: TraceExporterKind;
  /** Extra processors, e.g. the one that turns RPC spans into Prometheus histograms. */
  spanProcessors?: SpanProcessor[];
  /** Replaces the default gRPC + HTTP instrumentations. */
  instrumentations?: Instrumentation[];
}

export interface TracingHandle {
  exporter: TraceExporterKind;
  /** Spans finished so far; only filled when exporter is "memory" (tests). */
  finishedSpans(): ReadableSpan[];
  shutdown(): Promise<void>;
}

let handle: TracingHandle | undefined;

/**
 * Records every span so metrics and logs see it, but exports only what the caller's trace
 * decided to sample: a parent that arrived unsampled stays unsampled downstream.
 */
class RecordEverythingSampler implements Sampler {
  shouldSample(ctx: Context): SamplingResult {
    const parent = trace.getSpanContext(ctx);
    if (parent && (parent.traceFlags & TraceFlags.SAMPLED) === 0) return { decision: SamplingDecision.RECORD };
    return { decision: SamplingDecision.RECORD_AND_SAMPLED };
  }
  toString(): string {
    return "RecordEverythingSampler";
  }
}

export function chooseExporter(env: NodeJS.ProcessEnv = process.env): TraceExporterKind {
  const wanted = env.OTEL_TRACES_EXPORTER?.trim().toLowerCase();
  if (wanted === "otlp" || wanted === "console" || wanted === "memory" || wanted === "file" || wanted === "none") return wanted;
  return env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ? "otlp" : "none";
}

/** Paths that are probes, not traffic: no span for them. */
const UNTRACED_HTTP_PATHS = new Set(["/metrics", "/healthz", "/readyz"]);

export function defaultInstrumentations(): Instrumentation[] {
  return [
    new GrpcInstrumentation({ ignoreGrpcMethods: ["Check", "Watch"] }),
    new HttpInstrumentation({
      ignoreIncomingRequestHook: (req) => UNTRACED_HTTP_PATHS.has((req.url ?? "").split("?")[0]!),
    }),
  ];
}

/**
 * Start tracing once per process. Must run before @grpc/grpc-js is imported (register.ts
 * does this); a second call returns the first handle.
 */
export async function startTracing(options: TracingOptions = {}): Promise<TracingHandle> {
  if (handle) return handle;
  const id = serviceIdentity();
  const exporterKind = options.exporter ?? chooseExporter();
  const processors: SpanProcessor[] = [...(options.spanProcessors ?? [])];
  let memory: InMemorySpanExporter | undefined;
  if (exporterKind === "otlp") {
    // Loaded only when asked for: the exporter pulls in protobuf encoding and an HTTP client.
    const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-proto");
    processors.push(new BatchSpanProcessor(new OTLPTraceExporter()));
  } else if (exporterKind === "console") {
    processors.push(new SimpleSpanProcessor(new ConsoleSpanExporter()));
  } else if (exporterKind === "file") {
    const { JsonLinesSpanExporter } = await import("./file-exporter.js");
    const dir = process.env.OTEL_TRACES_FILE_DIR ?? ".data/traces";
    processors.push(new SimpleSpanProcessor(new JsonLinesSpanExporter(dir, options.serviceName ?? id.name)));
  } else if (exporterKind === "memory") {
    memory = new InMemorySpanExporter();
    processors.push(new SimpleSpanProcessor(memory));
  }
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: options.serviceName ?? id.name,
      [ATTR_SERVICE_VERSION]: options.serviceVersion ?? id.version,
      "service.instance.id": id.instance,
    }),
    sampler: new RecordEverythingSampler(),
    spanProcessors: processors,
  });
  // Registers the AsyncLocalStorage context manager and the W3C traceparent propagator.
  provider.register();
  const disable = registerInstrumentations({ instrumentations: options.instrumentations ?? defaultInstrumentations() });
  handle = {
    exporter: exporterKind,
    finishedSpans: () => memory?.getFinishedSpans() ?? [],
    async shutdown() {
      disable();
      await provider.shutdown();
      handle = undefined;
    },
  };
  return handle;
}

export function tracingHandle(): TracingHandle | undefined {
  return handle;
}

/** Flush and stop; call from the process's drain path. */
export async function shutdownTracing(): Promise<void> {
  await handle?.shutdown();
}

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
  const ctx = propagation.extract(context.active(), headers, getter);
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
