// OpenTelemetry tracing for a mesh process: the tracer provider, the exporter choice, the
// RPC telemetry of mesh/server and mesh/client, the HTTP instrumentation, and the helpers
// that carry trace context across NATS. Started by register.ts (loaded with `--import`)
// before the application, because the HTTP instrumentation can only patch a module that
// has not been loaded yet.
//
// Who makes which span:
//   gRPC SERVER and CLIENT spans: mesh/server and mesh/client, through rpc-telemetry.ts
//     (installed here), which also records the grpc_* metrics. Not
//     @opentelemetry/instrumentation-grpc: it cost ~120 µs of CPU per call, more than the
//     whole 10 % budget (docs/performance.md); every service serves through mesh/server and
//     calls through mesh/client, so the mesh knows each method and needs no patching. A
//     program using grpc-js directly gets no gRPC spans.
//   HTTP SERVER spans at the gateway's HTTP/1.1 side: @opentelemetry/instrumentation-http,
//     loaded only where enabled-instrumentations.ts says (the gateway, by default).
//   Database, producer and consumer spans: mesh/telemetry (db-spans.ts, trace-context.ts).
//
// Cost model: with no exporter (no OTLP endpoint) and no extra span processor nothing
// records spans, so every span is non-recording (PropagatingTracerProvider): it has fresh
// ids, so trace ids still reach logs, gRPC metadata and event headers, but no attributes,
// timestamps or processors; and mesh/server makes a call's SERVER span only when its
// handler's context is first asked for (rpc-telemetry.ts, DeferredTraceContext). Ids come
// from a CSPRNG pool (ids.ts). The RPC metrics do not depend on spans.
import {
  context,
  trace,
  INVALID_SPAN_CONTEXT,
  TraceFlags,
  type Context,
  type Span,
  type SpanOptions,
  type Tracer,
} from "@opentelemetry/api";
import { isTracingSuppressed } from "@opentelemetry/core";
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
import { HttpInstrumentation } from "@opentelemetry/instrumentation-http";
import { serviceIdentity } from "./service-identity.js";
import { enabledInstrumentations } from "./enabled-instrumentations.js";
import { installRpcTelemetry } from "./rpc-hooks.js";
import { setSpansRecorded } from "./recording.js";
import { MeshContextManager } from "./context-manager.js";
import { IdPool } from "./ids.js";
import { createRpcTelemetry } from "./rpc-telemetry.js";

// The header helpers live in trace-context.ts (API only); re-exported here for convenience.
export * from "./trace-context.js";

/** otlp: OTLP/HTTP protobuf; file: JSON lines in OTEL_TRACES_FILE_DIR (tests); memory: in-process (tests). */
export type TraceExporterKind = "otlp" | "console" | "memory" | "file" | "none";

export interface TracingOptions {
  serviceName?: string;
  serviceVersion?: string;
  /** Default: OTEL_TRACES_EXPORTER, else "otlp" when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, else "none". */
  exporter?: TraceExporterKind;
  /** Extra processors; with one, spans are recorded even when nothing is exported. */
  spanProcessors?: SpanProcessor[];
  /** Replaces the default (HTTP) instrumentations. */
  instrumentations?: Instrumentation[];
  /** Spans and metrics of mesh/server and mesh/client calls (rpc-telemetry.ts); default true. */
  rpc?: boolean;
}

export interface TracingHandle {
  exporter: TraceExporterKind;
  /** Whether spans are recorded (something exports them); when not, spans only carry ids. */
  recording: boolean;
  /** Spans finished so far; only filled when exporter is "memory" (tests). */
  finishedSpans(): ReadableSpan[];
  shutdown(): Promise<void>;
}

let handle: TracingHandle | undefined;

/**
 * When spans are recorded (an exporter or a processor wants them): records every span, so a
 * processor sees it, but exports only what the caller's trace decided to sample: a parent
 * that arrived unsampled stays unsampled downstream.
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

/**
 * The tracers of a process where nothing would record a span: every span is a
 * non-recording span with fresh ids, continuing the parent's trace (and its sampled flag;
 * a root is sampled, as RecordEverythingSampler makes it), so trace ids still reach logs,
 * gRPC metadata and event headers, and a downstream process that exports keeps the trace.
 * The SDK's own tracer cannot do this: a non-recording decision also clears the sampled
 * flag. Extends NodeTracerProvider only for register() (context manager, propagators).
 */
class PropagatingTracerProvider extends NodeTracerProvider {
  private readonly tracer = new PropagatingTracer();
  override getTracer(): Tracer {
    return this.tracer;
  }
}

class PropagatingTracer implements Tracer {
  private readonly ids = new IdPool();

  startSpan(_name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span {
    if (isTracingSuppressed(ctx)) return trace.wrapSpanContext(INVALID_SPAN_CONTEXT);
    const parent = options.root ? undefined : trace.getSpanContext(ctx);
    if (parent && trace.isSpanContextValid(parent)) {
      return trace.wrapSpanContext({
        traceId: parent.traceId,
        spanId: this.ids.generateSpanId(),
        traceFlags: parent.traceFlags,
        traceState: parent.traceState,
      });
    }
    return trace.wrapSpanContext({
      traceId: this.ids.generateTraceId(),
      spanId: this.ids.generateSpanId(),
      traceFlags: TraceFlags.SAMPLED,
    });
  }

  startActiveSpan<F extends (span: Span) => unknown>(name: string, ...args: unknown[]): ReturnType<F> {
    const fn = args[args.length - 1] as F;
    const options = (args.length >= 2 ? args[0] : undefined) as SpanOptions | undefined;
    const ctx = (args.length >= 3 ? args[1] : undefined) as Context | undefined;
    const parent = ctx ?? context.active();
    const span = this.startSpan(name, options, parent);
    return context.with(trace.setSpan(parent, span), fn as (span: Span) => ReturnType<F>, undefined, span);
  }
}

export function chooseExporter(env: NodeJS.ProcessEnv = process.env): TraceExporterKind {
  const wanted = env.OTEL_TRACES_EXPORTER?.trim().toLowerCase();
  if (wanted === "otlp" || wanted === "console" || wanted === "memory" || wanted === "file" || wanted === "none") return wanted;
  return env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ? "otlp" : "none";
}

/** Paths that are probes, not traffic: no span for them. */
const UNTRACED_HTTP_PATHS = new Set(["/metrics", "/healthz", "/readyz"]);

/**
 * The instrumentations enabled-instrumentations.ts asks for: HTTP at the gateway. gRPC
 * needs none: mesh/server and mesh/client make their spans (rpc-telemetry.ts).
 */
export function defaultInstrumentations(env: NodeJS.ProcessEnv = process.env): Instrumentation[] {
  const wanted = enabledInstrumentations(env);
  const list: Instrumentation[] = [];
  if (wanted.has("http")) {
    list.push(
      new HttpInstrumentation({
        ignoreIncomingRequestHook: (req) => UNTRACED_HTTP_PATHS.has((req.url ?? "").split("?")[0]!),
      }),
    );
  }
  return list;
}

/**
 * Start tracing once per process. Must run before the application imports node:http
 * (register.ts does this); a second call returns the first handle.
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
  // Nothing records when nothing exports and no processor asked for the spans.
  const recording = processors.length > 0;
  const provider = new (recording ? NodeTracerProvider : PropagatingTracerProvider)({
    resource: resourceFromAttributes({
      [ATTR_SERVICE_NAME]: options.serviceName ?? id.name,
      [ATTR_SERVICE_VERSION]: options.serviceVersion ?? id.version,
      "service.instance.id": id.instance,
    }),
    sampler: new RecordEverythingSampler(),
    idGenerator: new IdPool(),
    spanProcessors: processors,
  });
  // Registers the W3C traceparent propagator, and the context manager that keeps
  // OpenTelemetry's context in mesh's one AsyncLocalStorage (context-manager.ts).
  const contextManager = new MeshContextManager();
  provider.register({ contextManager });
  setSpansRecorded(recording);
  const disable = registerInstrumentations({ instrumentations: options.instrumentations ?? defaultInstrumentations() });
  if (options.rpc ?? true) {
    installRpcTelemetry(createRpcTelemetry(trace.getTracer("protomesh-rpc"), {
        deferServerSpans: !recording,
        // Straight to the manager: the API's context.active() looks the global up per call.
        activeContext: () => contextManager.active(),
      }));
  }
  handle = {
    exporter: exporterKind,
    recording,
    finishedSpans: () => memory?.getFinishedSpans() ?? [],
    async shutdown() {
      installRpcTelemetry(undefined);
      setSpansRecorded(false);
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
