/**
 * Serves Connect service implementations (`ServiceImpl<typeof XService>`) on a
 * @grpc/grpc-js server, with health, reflection and a bounded graceful close.
 *
 * API
 *   serve(service, impl): ServiceRegistration               typed pairing of a descriptor and its impl
 *   startMeshServer(options: MeshServerOptions): Promise<MeshServer>
 *     options.name            the service's name in logs, e.g. "catalog"
 *     options.host            default "0.0.0.0"
 *     options.port            default 0 (any free port; read it from the result)
 *     options.services        [serve(CatalogService, impl)] or [{ service, impl }]
 *     options.readiness?      probe for grpc.health.v1 (db ping, migrations applied)
 *     options.readinessIntervalMs?   default 5000
 *     options.interceptors?   Connect interceptors, run around every handler
 *     options.mapError?       turns what a handler threw into what is answered (no interceptor cost)
 *     options.reflection?     default true (grpc.reflection v1 and v1alpha)
 *     options.maxMessageBytes?        default 8 MiB, both directions
 *     options.onInternalError?        sees every non-ConnectError a handler throws
 *     options.logger?         pino-like { info, warn, error }; JSON lines on stderr by default
 *   MeshServer
 *     port, address ("127.0.0.1:5001"), health: HealthState, grpcServer: grpc.Server
 *     close(graceMs = 10_000): Promise<void>
 *       reports NOT_SERVING, stops accepting, ends server streams with UNAVAILABLE
 *       (their clients reconnect elsewhere), lets unary calls finish within
 *       graceMs, then cancels what is left.
 *   createServiceDefinition(service, impl, options?): { definition, handlers }
 *     the grpc-js pieces, for mounting on a grpc.Server of your own.
 *
 * Handlers get a Connect HandlerContext (mesh/handler-context): requestHeader (grpc metadata),
 * timeoutMs() (grpc-timeout), a signal that fires on client cancel, deadline,
 * server close (streams at once, unary calls when the grace runs out) and
 * completion, responseHeader / responseTrailer. The inbound
 * call context (deadline, x-request-id, traceparent, x-mesh-user-*) is kept in
 * AsyncLocalStorage so mesh/client calls inside the handler pass them on.
 *
 * With telemetry on (mesh/telemetry/register.ts), every call except grpc.health.v1's
 * runs in a SERVER span continuing the caller's traceparent, and is counted in the
 * grpc_server_* metrics (mesh/telemetry/rpc-telemetry.ts).
 *
 * A thrown ConnectError keeps its code, message and details on the wire
 * (details as google.rpc.Status in grpc-status-details-bin). Anything else is
 * INTERNAL "internal error"; the real error goes to onInternalError.
 * Client- and bidi-streaming methods answer UNIMPLEMENTED.
 */
import { setMaxListeners } from "node:events";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createServiceImplSpec } from "@connectrpc/connect";
import type { Interceptor, ServiceImpl } from "@connectrpc/connect";
import {
  createAsyncIterable,
  invokeUnaryImplementation,
  transformInvokeImplementation,
} from "@connectrpc/connect/protocol";
import { create, isMessage } from "@bufbuild/protobuf";
import type { DescMethod, DescMethodUnary, DescService } from "@bufbuild/protobuf";
import type { MethodImplSpec } from "@connectrpc/connect";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import * as reflectionV1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as reflectionV1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { callContextFromHandler, runInboundCall } from "./call-context.js";
import { callCompleted, encodeStatusDetails, grpcStatusFromCode, toConnectError } from "./errors.js";
import { headersToMetadata, methodDefinition } from "./grpc-codec.js";
import { MeshHandlerContext } from "./handler-context.js";
import { createHealthImpl, HealthState, ServingStatus } from "./health.js";
import type { ReadinessProbe } from "./health.js";
import { addReflection } from "./reflection.js";
import { rpcTelemetry, type ServerRpc } from "./telemetry/rpc-hooks.js";

/** A service descriptor and its implementation. */
export interface ServiceRegistration {
  service: DescService;
  // Partial: a missing method answers UNIMPLEMENTED.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  impl: Partial<ServiceImpl<any>>;
}

/** Pairs a descriptor with its implementation, type-checked against each other. */
export function serve<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>): ServiceRegistration {
  return { service, impl };
}

export interface MeshServerOptions {
  name: string;
  host?: string;
  port?: number;
  services: ServiceRegistration[];
  readiness?: ReadinessProbe;
  readinessIntervalMs?: number;
  interceptors?: Interceptor[];
  /**
   * Turns what a handler threw (or its stream failed with) into what is
   * answered, e.g. a database outage into UNAVAILABLE. Unlike an interceptor it
   * costs nothing on calls that succeed: with any interceptor every unary call
   * builds its whole Connect context (AbortController, deadline timer, three
   * Headers) and goes through Connect's promise chain. It gets the method and, for unary and
   * server-streaming calls, the request message, to name a field in its answer.
   */
  mapError?: MapError;
  reflection?: boolean;
  maxMessageBytes?: number;
  onInternalError?: (error: unknown, method: DescMethod) => void;
  /**
   * Where the server's own lines go (readiness changes, handler bugs): a pino
   * logger fits. One JSON line on stderr each by default.
   */
  logger?: MeshLogger;
  /** Extra grpc-js server options; they win over the defaults. */
  grpcOptions?: grpc.ServerOptions;
}

/** The part of a pino logger mesh/server uses. */
export interface MeshLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

// Errors have no enumerable fields: spell out what a reader needs.
const errorReplacer = (_key: string, value: unknown) =>
  value instanceof Error ? { type: value.name, message: value.message, stack: value.stack } : value;
const line = (level: string) => (obj: object, msg?: string) =>
  process.stderr.write(JSON.stringify({ level, time: Date.now(), msg, ...obj }, errorReplacer) + "\n");
const stderrLogger: MeshLogger = { info: line("info"), warn: line("warn"), error: line("error") };

export interface MeshServer {
  readonly name: string;
  readonly port: number;
  readonly address: string;
  readonly health: HealthState;
  readonly grpcServer: grpc.Server;
  close(graceMs?: number): Promise<void>;
}

/** Turns what a handler threw into what is answered (see MeshServerOptions.mapError). */
export type MapError = (error: unknown, method: DescMethod, request: unknown) => unknown;

/** Options shared by every handler of a server. */
export interface HandlerOptions {
  interceptors?: Interceptor[];
  mapError?: MapError;
  onInternalError?: (error: unknown, method: DescMethod) => void;
  /** Aborts unary handler contexts: the grace period is over. */
  forceSignal?: AbortSignal;
  /** Aborts server-streaming handler contexts: the server is closing. */
  drainSignal?: AbortSignal;
  /** Counts in-flight calls, for the drain. */
  inflight?: { add(): void; done(): void };
}

const defaultMaxMessageBytes = 8 * 1024 * 1024;

function internalErrorLogger(logger: MeshLogger): (error: unknown, method: DescMethod) => void {
  return (error, method) =>
    logger.error({ err: error, method: `${method.parent.typeName}/${method.name}` }, "handler failed");
}

/**
 * The status object grpc-js sends for an error thrown by a handler. A
 * non-Connect error thrown once the call was aborted (a driver's AbortError
 * after a cancel or deadline) is the abort, not a bug: it answers with the
 * abort's reason.
 */
function errorStatus(
  thrown: unknown,
  trailer: Headers | undefined,
  method: DescMethod,
  onInternalError: HandlerOptions["onInternalError"],
  abortReason?: unknown,
): Partial<grpc.StatusObject> {
  const source = !(thrown instanceof ConnectError) && abortReason instanceof ConnectError ? abortReason : thrown;
  const err = toConnectError(source);
  if (err !== source || err.code === Code.Internal || err.code === Code.Unknown) {
    (onInternalError ?? internalErrorLogger(stderrLogger))(err.cause ?? source, method);
  }
  const metadata = headersToMetadata(trailer);
  // A downstream error passed through keeps its status and details, not the
  // downstream's trailers (as Connect does).
  if (!err.isWireError) headersToMetadata(err.metadata, metadata);
  const details = encodeStatusDetails(err);
  if (details) metadata.set("grpc-status-details-bin", details);
  return { code: grpcStatusFromCode(err.code), details: err.rawMessage, metadata };
}

type AnyCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>;

// Abort reasons, shared: creating an error per call is measurable (callCompleted is
// mesh/errors', which mesh/client aborts its calls with too).
const clientCancelled = new ConnectError("the call was cancelled by the client", Code.Canceled);

function handlerContext(call: AnyCall, method: DescMethod, shutdownSignal: AbortSignal | undefined) {
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  const ctx = new MeshHandlerContext(
    method,
    call.metadata,
    Number.isFinite(deadlineMs) ? deadlineMs : undefined,
    shutdownSignal,
  );
  // grpc-js also emits "cancelled" when a finished call's stream closes; by
  // then the context is aborted with callCompleted and this does nothing.
  call.once("cancelled", () => ctx.abort(clientCancelled));
  if (call.cancelled) ctx.abort(clientCancelled);
  return ctx;
}

function sendHeader(call: AnyCall, header: Headers | undefined): void {
  if (!header) return;
  let any = false;
  header.forEach(() => (any = true));
  if (any) call.sendMetadata(headersToMetadata(header));
}

/**
 * Starts a unary implementation: its output, or a promise of it. Connect's
 * helper runs only when there are interceptors to apply; otherwise no promise
 * is made here, since with AsyncLocalStorage active every promise costs.
 */
function startUnary(
  spec: MethodImplSpec & { kind: "unary" },
  ctx: MeshHandlerContext,
  request: unknown,
  interceptors: Interceptor[],
): unknown {
  if (interceptors.length > 0) {
    return invokeUnaryImplementation(spec, ctx.toPlainObject(), request as never, interceptors);
  }
  return spec.impl(request as never, ctx);
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return typeof (v as PromiseLike<unknown> | null)?.then === "function";
}

/**
 * One unary call from start to answer. A class, so that a call makes no
 * function objects of its own (see mesh/handler-context on why that matters).
 */
class UnaryCall {
  constructor(
    private readonly call: grpc.ServerUnaryCall<unknown, unknown>,
    private readonly callback: grpc.sendUnaryData<unknown>,
    private readonly ctx: MeshHandlerContext,
    private readonly method: DescMethodUnary,
    private readonly opts: HandlerOptions,
    /** Span and metrics of the call, when telemetry is on. */
    private readonly rpc: ServerRpc | undefined,
  ) {}

  succeed(res: unknown): void {
    const { call, ctx, method } = this;
    try {
      const message = isMessage(res, method.output) ? res : create(method.output, res as never);
      sendHeader(call, ctx.touchedResponseHeader);
      const trailer = ctx.touchedResponseTrailer;
      this.callback(null, message, trailer ? headersToMetadata(trailer) : undefined);
    } catch (e) {
      // The handler answered with something that is not the output message.
      const status = errorStatus(e, ctx.touchedResponseTrailer, method, this.opts.onInternalError);
      this.callback(status);
      this.done(status);
      return;
    }
    this.done(undefined);
  }

  fail(thrown: unknown): void {
    const { ctx } = this;
    const e = this.opts.mapError ? this.opts.mapError(thrown, this.method, this.call.request) : thrown;
    sendHeader(this.call, ctx.touchedResponseHeader);
    const status = errorStatus(e, ctx.touchedResponseTrailer, this.method, this.opts.onInternalError, ctx.abortReason);
    this.callback(status);
    this.done(status);
  }

  private done(status: Partial<grpc.StatusObject> | undefined): void {
    // As in Connect's own handlers, the signal also fires on completion,
    // so work tied to it (downstream calls) stops with the call.
    this.ctx.abort(callCompleted);
    this.opts.inflight?.done();
    if (this.rpc) endServerRpc(this.rpc, this.call, status);
  }
}

/** Ends a call's span and metrics: CANCELLED when the client went away, else the status sent (none: OK). */
function endServerRpc(rpc: ServerRpc, call: { cancelled: boolean }, status: Partial<grpc.StatusObject> | undefined): void {
  if (call.cancelled) rpc.end(grpc.status.CANCELLED, "cancelled by the client");
  else if (status) rpc.end(status.code ?? grpc.status.UNKNOWN, status.details);
  else rpc.end(grpc.status.OK);
}

function unaryHandler(spec: MethodImplSpec & { kind: "unary" }, opts: HandlerOptions): grpc.handleUnaryCall<unknown, unknown> {
  const interceptors = opts.interceptors ?? [];
  return (call, callback) => {
    opts.inflight?.add();
    const ctx = handlerContext(call, spec.method, opts.forceSignal);
    const rpc = rpcTelemetry()?.server(spec.method, call.metadata);
    const state = new UnaryCall(call, callback, ctx, spec.method, opts, rpc);
    let result: unknown;
    try {
      result = runInboundCall(callContextFromHandler(ctx), rpc?.trace, () =>
        startUnary(spec, ctx, call.request, interceptors),
      );
    } catch (e) {
      state.fail(e);
      return;
    }
    if (isThenable(result)) {
      result.then(
        (r) => state.succeed(r),
        (e) => state.fail(e),
      );
    } else {
      state.succeed(result);
    }
  };
}

function serverStreamingHandler(
  spec: MethodImplSpec & { kind: "server_streaming" },
  opts: HandlerOptions,
): grpc.handleServerStreamingCall<unknown, unknown> {
  const interceptors = opts.interceptors ?? [];
  return (call) => {
    opts.inflight?.add();
    const ctx = handlerContext(call, spec.method, opts.drainSignal);
    const rpc = rpcTelemetry()?.server(spec.method, call.metadata);
    let failed: Partial<grpc.StatusObject> | undefined;
    // With interceptors, Connect's helper runs them and needs every piece of the context
    // made up front. Without (mesh/app's servers), the implementation gets the lazy
    // context and its messages come straight from its generator, not through Connect's
    // four nested ones: a stream per order (WatchOrder) is not long-lived enough to
    // amortise either.
    const plain = interceptors.length > 0 ? ctx.toPlainObject() : undefined;
    const output = spec.method.output;
    const run = async () => {
      const messages = plain
        ? transformInvokeImplementation(spec, plain, interceptors)(createAsyncIterable([call.request as never]))
        : spec.impl(call.request as never, ctx);
      let headerSent = false;
      for await (const value of messages) {
        if (!headerSent) {
          sendHeader(call, plain ? plain.responseHeader : ctx.touchedResponseHeader);
          headerSent = true;
        }
        if (call.cancelled) break;
        const message = plain || isMessage(value, output) ? value : create(output, value as never);
        if (!call.write(message)) await drained(call, (plain ?? ctx).signal);
      }
      // An aborted stream ends with the reason it was aborted for.
      if (plain ? plain.signal.aborted : ctx.isAborted) {
        if (!call.cancelled) throw plain ? plain.signal.reason : ctx.abortReason;
      }
      if (!headerSent) sendHeader(call, plain ? plain.responseHeader : ctx.touchedResponseHeader);
      call.end(headersToMetadata(plain ? plain.responseTrailer : ctx.touchedResponseTrailer));
    };
    runInboundCall(callContextFromHandler(plain ?? ctx), rpc?.trace, run)
      .catch((e: unknown) => {
        if (call.cancelled) return;
        const trailer = plain ? plain.responseTrailer : ctx.touchedResponseTrailer;
        failed = errorStatus(opts.mapError ? opts.mapError(e, spec.method, call.request) : e, trailer, spec.method, opts.onInternalError, ctx.abortReason);
        call.emit("error", failed);
      })
      .finally(() => {
        ctx.abort(callCompleted);
        opts.inflight?.done();
        if (rpc) endServerRpc(rpc, call, failed);
      });
  };
}

/** Resolves when the stream can take more, or when the call is over. */
function drained(call: grpc.ServerWritableStream<unknown, unknown>, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      call.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.on("drain", done);
    signal.addEventListener("abort", done);
  });
}

function unimplemented(method: DescMethod): grpc.UntypedHandleCall {
  const status = {
    code: grpc.status.UNIMPLEMENTED,
    details: `${method.parent.typeName}.${method.name}: ${method.methodKind.replace("_", "-")} methods are not supported by mesh/server`,
  };
  if (method.methodKind === "client_streaming") {
    return ((_call, callback) => callback(status)) as grpc.handleClientStreamingCall<unknown, unknown>;
  }
  return ((call) => {
    call.on("error", () => {});
    call.emit("error", status);
  }) as grpc.handleBidiStreamingCall<unknown, unknown>;
}

/** The grpc-js service definition and handlers of one service implementation. */
export function createServiceDefinition(
  service: DescService,
  impl: ServiceRegistration["impl"],
  opts: HandlerOptions = {},
): { definition: grpc.ServiceDefinition; handlers: grpc.UntypedServiceImplementation } {
  const spec = createServiceImplSpec(service, impl);
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const m = spec.methods[method.localName];
    definition[method.localName] = methodDefinition(method);
    switch (m.kind) {
      case "unary":
        handlers[method.localName] = unaryHandler(m, opts);
        break;
      case "server_streaming":
        handlers[method.localName] = serverStreamingHandler(m, opts);
        break;
      default:
        handlers[method.localName] = unimplemented(method);
    }
  }
  return { definition, handlers };
}

/** Counts in-flight calls and tells when the count reaches zero. */
function inflightCounter() {
  let count = 0;
  let waiters: (() => void)[] = [];
  return {
    add() {
      count++;
    },
    done() {
      count--;
      if (count === 0) {
        for (const w of waiters) w();
        waiters = [];
      }
    },
    get count() {
      return count;
    },
    idle(): Promise<void> {
      return count === 0 ? Promise.resolve() : new Promise((r) => waiters.push(r));
    },
  };
}

/** Starts a gRPC server for the given services; resolves once it listens. */
export async function startMeshServer(options: MeshServerOptions): Promise<MeshServer> {
  const maxBytes = options.maxMessageBytes ?? defaultMaxMessageBytes;
  const server = new grpc.Server({
    "grpc.max_receive_message_length": maxBytes,
    "grpc.max_send_message_length": maxBytes,
    // No channelz: nothing serves it, and its bookkeeping costs on every call (see
    // mesh/client's defaultChannelOptions). grpcOptions can turn it back on.
    "grpc.enable_channelz": 0,
    // Find dead peers within a minute.
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_timeout_ms": 20_000,
    // Rotate connections so round-robin clients over DNS discover new
    // replicas; open streams keep going (the grace is unlimited).
    "grpc.max_connection_age_ms": 5 * 60_000,
    ...options.grpcOptions,
  });

  const force = new AbortController();
  const drain = new AbortController();
  // Every in-flight call that reads its signal listens on these server-wide
  // signals until it ends: hundreds at once is normal, not a leak.
  setMaxListeners(0, force.signal, drain.signal);
  const inflight = inflightCounter();
  const logger = options.logger ?? stderrLogger;
  const handlerOpts: HandlerOptions = {
    interceptors: options.interceptors,
    mapError: options.mapError,
    onInternalError: options.onInternalError ?? internalErrorLogger(logger),
    forceSignal: force.signal,
    drainSignal: drain.signal,
    inflight,
  };

  const health = new HealthState(options.services.map((s) => s.service.typeName));
  const all: ServiceRegistration[] = [...options.services, { service: Health, impl: createHealthImpl(health) }];
  for (const { service, impl } of all) {
    const { definition, handlers } = createServiceDefinition(service, impl, handlerOpts);
    server.addService(definition, handlers);
  }
  const offered = all.map((s) => s.service);
  if (options.reflection ?? true) {
    addReflection(server, [...offered, reflectionV1.ServerReflection, reflectionV1alpha.ServerReflection]);
  }

  if (options.readiness) {
    await health.startProbe(options.readiness, {
      intervalMs: options.readinessIntervalMs,
      onChange: (ready, error) =>
        ready
          ? logger.info({ service: options.name }, "ready")
          : logger.warn({ service: options.name, err: error }, "not ready"),
    });
  }

  const host = options.host ?? "0.0.0.0";
  const port = await new Promise<number>((resolve, reject) => {
    const hostPart = host.includes(":") ? `[${host}]` : host;
    server.bindAsync(`${hostPart}:${options.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    );
  });

  let closing: Promise<void> | undefined;
  const close = (graceMs = 10_000): Promise<void> => {
    closing ??= (async () => {
      health.setAll(ServingStatus.NOT_SERVING);
      health.stop();
      drain.abort(new ConnectError("server shutting down", Code.Unavailable));
      const shutdown = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), graceMs);
      });
      const outcome = await Promise.race([inflight.idle().then(() => shutdown), graceOver]);
      clearTimeout(timer);
      if (outcome === "timeout") {
        force.abort(new ConnectError("server shutting down", Code.Unavailable));
        server.forceShutdown();
      }
    })();
    return closing;
  };

  return {
    name: options.name,
    port,
    address: `${host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host}:${port}`,
    health,
    grpcServer: server,
    close,
  };
}
