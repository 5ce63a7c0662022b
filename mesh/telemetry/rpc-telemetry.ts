// gRPC spans and RPC metrics, made by mesh/server and mesh/client themselves (through
// rpc-hooks.ts) rather than by @opentelemetry/instrumentation-grpc patching grpc-js.
//
// Why: the project owns both ends of every call, and the generic instrumentation cost
// ~120 µs of CPU per call (bench/telemetry-overhead.ts, --cpu-prof: argument copies, regex
// parsing of the method path and target per call, wrapping every callback and listener, a
// debug JSON.stringify, two context switches per side), the span-to-metrics processor
// another ~16 µs. Here everything that depends only on the method (span name, attributes,
// metric series) is built once, the traceparent is read and written with the W3C
// propagator, and the metrics are plain numbers per (method, code) that prom-client reads
// at scrape time (metrics.ts RpcSeries).
//
// What a call gets, following the OpenTelemetry RPC semantic conventions:
//   span "shop.catalog.v1.CatalogService/GetProduct", kind SERVER or CLIENT,
//   rpc.system=grpc, rpc.service, rpc.method, rpc.grpc.status_code,
//   server.address / server.port on CLIENT spans;
//   status ERROR for every non-OK code on the client, and on the server for the codes that
//   mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
//   UNAVAILABLE, DATA_LOSS), with the status message;
//   grpc_{server,client}_handled_total and _handling_seconds by service, method, code.
import type * as grpc from "@grpc/grpc-js";
import type { DescMethod } from "@bufbuild/protobuf";
import {
  context,
  trace,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  INVALID_TRACEID,
  type Attributes,
  type Context,
  type Span,
  type SpanOptions,
  type SpanContext,
  type TextMapGetter,
  type Tracer,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { rpcSeries, type RpcSeries } from "./metrics.js";
import type { ClientRpc, RpcTelemetry, ServerRpc } from "./rpc-hooks.js";
import { DeferredTraceContext } from "./context-manager.js";

const propagator = new W3CTraceContextPropagator();

const metadataGetter: TextMapGetter<grpc.Metadata> = {
  keys: (md) => Object.keys(md.getMap()),
  get: (md, key) => {
    const values = md.get(key);
    return values.length === 0 ? undefined : typeof values[0] === "string" ? (values[0] as string) : undefined;
  },
};

/**
 * What W3CTraceContextPropagator.inject writes for a span (traceparent, and tracestate when
 * the span has one), straight from its span context: the propagator would need a Context
 * made only to carry the span to it. Nothing for an invalid span (tracing suppressed).
 */
function writeTraceparent(sc: SpanContext, md: grpc.Metadata): void {
  // A tracer's span is valid by construction, or INVALID_SPAN_CONTEXT when tracing is
  // suppressed: no need for the API's two regular expressions per call.
  if (sc.traceId === INVALID_TRACEID) return;
  md.set("traceparent", `00-${sc.traceId}-${sc.spanId}-0${Number(sc.traceFlags || TraceFlags.NONE).toString(16)}`);
  if (sc.traceState) md.set("tracestate", sc.traceState.serialize());
}

/** Services whose calls are probes, not traffic: no spans, no metrics (as before: Check, Watch). */
const UNTRACED_SERVICES = new Set(["grpc.health.v1.Health"]);

// grpc status codes a server span reports as ERROR (semantic conventions, RPC spans).
const SERVER_ERROR_CODES = new Set([2, 4, 12, 13, 14, 15]);
const CODE_COUNT = 17;

/** Everything about a method that does not change from call to call. */
interface MethodTelemetry {
  readonly service: string;
  readonly method: string;
  readonly spanName: string;
  readonly serverOptions: SpanOptions;
  /** Per target: the client span options (server.address / server.port differ). */
  readonly clientOptions: Map<string, SpanOptions>;
  /** Metric children per status code, made on first use. */
  readonly serverSeries: (RpcSeries | undefined)[];
  readonly clientSeries: (RpcSeries | undefined)[];
}

const methods = new WeakMap<DescMethod, MethodTelemetry | null>();

function methodTelemetry(desc: DescMethod): MethodTelemetry | null {
  let m = methods.get(desc);
  if (m === undefined) {
    const service = desc.parent.typeName;
    if (UNTRACED_SERVICES.has(service)) m = null;
    else {
      const attributes: Attributes = { "rpc.system": "grpc", "rpc.service": service, "rpc.method": desc.name };
      m = {
        service,
        method: desc.name,
        spanName: `${service}/${desc.name}`,
        serverOptions: { kind: SpanKind.SERVER, attributes },
        clientOptions: new Map(),
        serverSeries: new Array(CODE_COUNT),
        clientSeries: new Array(CODE_COUNT),
      };
    }
    methods.set(desc, m);
  }
  return m;
}

/** "dns:///catalog.shop.svc:5001" -> catalog.shop.svc, 5001; "[::1]:5001" -> ::1, 5001. */
export function targetAddress(target: string): { address?: string; port?: number } {
  // "scheme:rest" unless rest is only a port ("catalog:5001"); then "//authority/" if any.
  const scheme = /^[a-z][a-z0-9+.-]*:(?!\d+$)(?:\/\/[^/]*\/)?\/?/i.exec(target);
  const hostPort = scheme ? target.slice(scheme[0].length) : target;
  const m = /^\[?([^\]]*?)\]?(?::(\d+))?$/.exec(hostPort);
  if (!m || !m[1]) return {};
  return { address: m[1], port: m[2] ? Number(m[2]) : undefined };
}

function clientOptions(m: MethodTelemetry, target: string): SpanOptions {
  let options = m.clientOptions.get(target);
  if (!options) {
    const { address, port } = targetAddress(target);
    const attributes: Attributes = { ...m.serverOptions.attributes };
    if (address) attributes["server.address"] = address;
    if (port !== undefined) attributes["server.port"] = port;
    options = { kind: SpanKind.CLIENT, attributes };
    m.clientOptions.set(target, options);
  }
  return options;
}

function codeIndex(code: number): number {
  return code >= 0 && code < CODE_COUNT ? code : 2; // anything else counts as UNKNOWN
}

function finish(span: Span, code: number, message: string | undefined, isError: boolean): void {
  if (span.isRecording()) {
    span.setAttribute("rpc.grpc.status_code", code);
    if (isError) span.setStatus({ code: SpanStatusCode.ERROR, message });
  }
  span.end();
}

// Classes, not closures: nothing but the instance is made per call (tsx names every
// function made per call, which costs; see mesh/handler-context).
//
// The SERVER span is made when the call starts if spans are recorded (its start time
// matters), else only when the handler's context is first asked for (DeferredTraceContext):
// by a log line, a downstream call or an event.
class ServerCall extends DeferredTraceContext implements ServerRpc {
  private readonly started = performance.now();
  private span: Span | undefined;
  private context: Context | undefined;

  constructor(
    private readonly m: MethodTelemetry,
    private readonly tracer: Tracer,
    private readonly metadata: grpc.Metadata,
    deferred: boolean,
  ) {
    super();
    if (!deferred) this.resolve();
  }

  get trace(): unknown {
    return this.context ?? this;
  }

  resolve(): Context {
    if (this.context === undefined) {
      // From the root: the caller's traceparent is the parent, never what was active here.
      const parent = propagator.extract(ROOT_CONTEXT, this.metadata, metadataGetter);
      this.span = this.tracer.startSpan(this.m.spanName, this.m.serverOptions, parent);
      this.context = trace.setSpan(parent, this.span);
    }
    return this.context;
  }

  end(code: number, message?: string): void {
    const i = codeIndex(code);
    (this.m.serverSeries[i] ??= rpcSeries("server", this.m.service, this.m.method, i)).record(
      (performance.now() - this.started) / 1000,
    );
    if (this.span) finish(this.span, code, message, SERVER_ERROR_CODES.has(code));
  }
}

class ClientCall implements ClientRpc {
  private readonly started = performance.now();
  private ended = false;
  constructor(
    private readonly m: MethodTelemetry,
    private readonly span: Span,
  ) {}

  end(code: number, message?: string): void {
    if (this.ended) return;
    this.ended = true;
    const i = codeIndex(code);
    (this.m.clientSeries[i] ??= rpcSeries("client", this.m.service, this.m.method, i)).record(
      (performance.now() - this.started) / 1000,
    );
    finish(this.span, code, message, code !== 0);
  }
}

export interface RpcTelemetryOptions {
  /**
   * Make a SERVER span only when the handler's context is asked for: right when spans are
   * not recorded (startTracing sets it when nothing exports), since such a span is only ids.
   */
  deferServerSpans?: boolean;
  /** The active context for CLIENT spans; default the API's context.active(). */
  activeContext?: () => Context;
}

/** The RPC telemetry startTracing installs; spans come from `tracer`. */
export function createRpcTelemetry(tracer: Tracer, options: RpcTelemetryOptions = {}): RpcTelemetry {
  const deferred = options.deferServerSpans ?? false;
  const active = options.activeContext ?? (() => context.active());
  return {
    server(desc, metadata) {
      const m = methodTelemetry(desc);
      if (!m) return undefined;
      return new ServerCall(m, tracer, metadata, deferred);
    },
    client(desc, target, metadata) {
      const m = methodTelemetry(desc);
      if (!m) return undefined;
      const span = tracer.startSpan(m.spanName, clientOptions(m, target), active());
      // Replaces the traceparent copied from the inbound call: the callee's parent is this span.
      writeTraceparent(span.spanContext(), metadata);
      return new ClientCall(m, span);
    },
  };
}
