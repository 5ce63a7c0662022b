// OpenTelemetry tracing for a mesh process: the tracer provider, the gRPC and HTTP
// instrumentations, the exporter choice, and the helpers that carry trace context across
// NATS. Started by register.ts (loaded with `--import`) before @grpc/grpc-js is imported,
// because the instrumentation can only patch a module that has not been loaded yet.
//
// Cost model: with no OTLP endpoint nothing is exported (no span processor that does I/O),
// but spans are still created so trace ids reach logs, metadata and event headers, and the
// RPC duration metrics (metrics.ts) are read off the finished spans.
import { trace, TraceFlags, type Context } from "@opentelemetry/api";
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

// The header helpers live in trace-context.ts (API only); re-exported here for convenience.
export * from "./trace-context.js";

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
