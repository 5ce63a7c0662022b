/**
 * Typed clients between services: a Connect `Transport` over @grpc/grpc-js, so
 * `createClient(Service, transport)` from @connectrpc/connect gives the typed
 * client with the generated message types.
 *
 * API
 *   createMeshClient(service, target, options?): Client<typeof service>
 *       one shared channel per target, unless options carry interceptors or
 *       channel settings; closeMeshClients() closes them all
 *   createMeshTransport(options: MeshTransportOptions): MeshTransport
 *       MeshTransport = Transport & { close(): void; grpcClient: grpc.Client }
 *   closeMeshClients(): void           closes every channel createMeshClient opened (register it with mesh/shutdown)
 *   methodPolicyOf(method): { timeoutMs?: number; idempotent: boolean }
 *
 * MeshTransportOptions
 *   target                 "127.0.0.1:5001", "catalog:5001", "dns:///catalog.shop.svc:5001"
 *   defaultTimeoutMs?      unary calls of methods without a (protomesh.v1.method).timeout; 10 s
 *   interceptors?          Connect interceptors
 *   retry?                 { maxAttempts = 3, baseDelayMs = 50, maxDelayMs = 1000 }
 *   credentials?, channelOptions?   grpc-js settings (insecure, round_robin by default)
 *
 * What every call does:
 *   - deadline: the caller's timeoutMs, else the method's (protomesh.v1.method).timeout,
 *     else defaultTimeoutMs (unary only); never later than the inbound call's
 *     deadline when made inside a mesh handler.
 *   - metadata: the inbound call's x-request-id, traceparent, tracestate, baggage,
 *     x-mesh-user-id, x-mesh-user-role, then the caller's own headers (they win);
 *     a fresh x-request-id when there is none.
 *   - telemetry (when mesh/telemetry/register.ts started it): a CLIENT span per attempt,
 *     child of the active span, whose traceparent replaces the inbound one, and the
 *     grpc_client_* metrics (mesh/telemetry/rpc-telemetry.ts).
 *   - cancellation: the caller's signal, and the inbound call's signal.
 *   - retries: only unary methods marked (protomesh.v1.method).idempotent, only
 *     on UNAVAILABLE, with jittered exponential backoff, within the deadline.
 *   - errors: ConnectError with the gRPC code, message and details
 *     (google.rpc.Status from grpc-status-details-bin).
 *   - server streams: as with every Connect transport, leaving a `for await`
 *     early does not end the call; abort its signal to stop it.
 */
import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient, createContextValues } from "@connectrpc/connect";
import type { Client, Interceptor, StreamResponse, Transport, UnaryRequest, UnaryResponse } from "@connectrpc/connect";
import { runStreamingCall } from "@connectrpc/connect/protocol";
import { create, getOption, hasOption } from "@bufbuild/protobuf";
import type {
  DescMessage,
  DescMethod,
  DescMethodStreaming,
  DescMethodUnary,
  DescService,
  MessageInitShape,
  MessageShape,
} from "@bufbuild/protobuf";
import { method as methodOption } from "../gen/protomesh/v1/options_pb.js";
import { currentCallContext } from "./call-context.js";
import { callCompleted, codeFromGrpcStatus, decodeStatusDetails } from "./errors.js";
import { deserializer, headersToMetadata, metadataToHeaders, methodPath, serializer } from "./grpc-codec.js";
import { rpcTelemetry, type ClientRpc } from "./telemetry/rpc-hooks.js";
// Node 20 builds two deprecate wrappers per ClientHttp2Session.request; grpc-js makes one per call.
import "./async-bind.js";

/** What `new Headers(...)` accepts (the DOM lib is not loaded). */
type HeaderInit = ConstructorParameters<typeof Headers>[0];

export interface RetryOptions {
  /** Attempts in all, the first included; 3 by default. */
  maxAttempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
}

export interface MeshTransportOptions {
  target: string;
  defaultTimeoutMs?: number;
  interceptors?: Interceptor[];
  retry?: RetryOptions;
  credentials?: grpc.ChannelCredentials;
  channelOptions?: grpc.ChannelOptions;
}

export type MeshTransport = Transport & { close(): void; readonly grpcClient: grpc.Client };

export interface MethodPolicy {
  timeoutMs?: number;
  idempotent: boolean;
}

const policyCache = new WeakMap<DescMethod, MethodPolicy>();
const codecCache = new WeakMap<DescMethod, { serialize: (m: unknown) => Buffer; deserialize: (b: Buffer) => unknown }>();

/** The wire codec of a method, made once per method. */
function codecOf(method: DescMethod) {
  let codec = codecCache.get(method);
  if (!codec) {
    codec = { serialize: serializer(method.input) as (m: unknown) => Buffer, deserialize: deserializer(method.output) };
    codecCache.set(method, codec);
  }
  return codec;
}

/** The runtime policy of a method, from its (protomesh.v1.method) option. */
export function methodPolicyOf(method: DescMethod): MethodPolicy {
  let policy = policyCache.get(method);
  if (!policy) {
    policy = { idempotent: false };
    if (hasOption(method, methodOption)) {
      const opt = getOption(method, methodOption);
      policy.idempotent = opt.idempotent;
      if (opt.timeout) {
        const ms = Number(opt.timeout.seconds) * 1000 + Math.floor(opt.timeout.nanos / 1e6);
        if (ms > 0) policy.timeoutMs = ms;
      }
    }
    policyCache.set(method, policy);
  }
  return policy;
}

const defaultChannelOptions: grpc.ChannelOptions = {
  // Spread calls over every address the resolver returns (DNS: all replicas).
  "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
  "grpc.keepalive_time_ms": 60_000,
  "grpc.keepalive_timeout_ms": 20_000,
  "grpc.max_receive_message_length": 8 * 1024 * 1024,
  "grpc.max_send_message_length": 8 * 1024 * 1024,
  "grpc.initial_reconnect_backoff_ms": 200,
  "grpc.max_reconnect_backoff_ms": 5_000,
  // No channelz: nothing serves it, and grpc-js's per-call bookkeeping for it (call counters,
  // timestamps, trace events on channel, subchannel and server) cost 4.7 % of a unary call,
  // client and server together (in-process A/B, alternating slices). channelOptions can
  // turn it back on.
  "grpc.enable_channelz": 0,
};

/** A ConnectError for a status received from grpc-js. */
function errorFromStatus(status: Partial<grpc.StatusObject>): ConnectError {
  const md = status.metadata;
  const bin = md?.get("grpc-status-details-bin")[0];
  const header = md ? metadataToHeaders(md) : undefined;
  header?.delete("grpc-status-details-bin");
  const err = decodeStatusDetails(
    typeof bin === "string" ? Buffer.from(bin, "base64") : bin,
    codeFromGrpcStatus(status.code ?? grpc.status.UNKNOWN),
    status.details ?? "",
    header,
  );
  err.isWireError = true;
  return err;
}

/**
 * Ends a call's span and metrics with the code the caller sees: a call we cancelled because
 * the signal fired (Connect's timeout, the caller's abort) reports the abort's code, e.g.
 * DEADLINE_EXCEEDED, not grpc-js's CANCELLED. Connect's codes are gRPC's numbers.
 */
function endClientRpc(rpc: ClientRpc, status: grpc.StatusObject, signal: AbortSignal): void {
  const reason: unknown = signal.aborted ? signal.reason : undefined;
  if (status.code === grpc.status.CANCELLED && reason instanceof ConnectError) rpc.end(reason.code, reason.rawMessage);
  else rpc.end(status.code, status.details);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}

/**
 * Connect's runUnaryCall for this transport: interceptors around `next`, one signal that
 * fires on the caller's abort, the timeout, a failure, or completion. The difference:
 * completion aborts the signal with one shared reason. Connect's aborts it with none,
 * and Node then makes a DOMException, stack trace and all, for every call: 3.3-3.6 % of
 * a unary call's CPU in a profile of bench/telemetry-overhead.ts. Connect also links two
 * AbortControllers per call where one does.
 */
function runUnary<I extends DescMessage, O extends DescMessage>(opt: {
  interceptors?: Interceptor[];
  signal?: AbortSignal;
  timeoutMs?: number;
  req: Omit<UnaryRequest<I, O>, "signal" | "message"> & { message: MessageInitShape<I> };
  next: (req: UnaryRequest<I, O>) => Promise<UnaryResponse<I, O>>;
}): Promise<UnaryResponse<I, O>> {
  let next = opt.next;
  // The first interceptor is the outermost, as in Connect.
  if (opt.interceptors) for (let i = opt.interceptors.length - 1; i >= 0; i--) next = opt.interceptors[i]!(next as never) as unknown as typeof next;
  const controller = new AbortController();
  const caller = opt.signal;
  const onCallerAbort = { handleEvent: () => controller.abort(abortReason(caller!)) };
  if (caller?.aborted) controller.abort(abortReason(caller));
  else caller?.addEventListener("abort", onCallerAbort);
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (opt.timeoutMs !== undefined) {
    const timedOut = { handleEvent: () => controller.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)) };
    if (opt.timeoutMs <= 0) timedOut.handleEvent();
    else timer = setTimeout(() => timedOut.handleEvent(), opt.timeoutMs);
  }
  const cleanup = () => {
    clearTimeout(timer);
    caller?.removeEventListener("abort", onCallerAbort);
  };
  // Already aborted (the caller's signal, a deadline already past): no call goes out.
  // An abort listener added now would never fire.
  if (controller.signal.aborted) {
    cleanup();
    return Promise.reject(ConnectError.from(controller.signal.reason, Code.Canceled));
  }
  const req: UnaryRequest<I, O> = {
    ...opt.req,
    message: create(opt.req.method.input, opt.req.message),
    signal: controller.signal,
  };
  return next(req).then(
    (res) => {
      cleanup();
      controller.abort(callCompleted);
      return res;
    },
    (reason: unknown) => {
      // A fired signal is why the call failed: its reason (the timeout, the caller's abort) wins.
      const e = controller.signal.aborted
        ? ConnectError.from(controller.signal.reason, Code.Canceled)
        : ConnectError.from(reason);
      controller.abort(e);
      cleanup();
      return Promise.reject(e);
    },
  );
}

/** An aborted signal's reason; an AbortError when it has none, as Connect does. */
function abortReason(signal: AbortSignal): unknown {
  if (signal.reason !== undefined) return signal.reason;
  const e = new Error("This operation was aborted");
  e.name = "AbortError";
  return e;
}

/** A Connect Transport that speaks gRPC through a grpc-js channel. */
export function createMeshTransport(options: MeshTransportOptions): MeshTransport {
  const grpcClient = new grpc.Client(options.target, options.credentials ?? grpc.credentials.createInsecure(), {
    ...defaultChannelOptions,
    ...options.channelOptions,
  });
  const defaultTimeoutMs = options.defaultTimeoutMs ?? 10_000;
  const maxAttempts = Math.max(1, options.retry?.maxAttempts ?? 3);
  const baseDelayMs = options.retry?.baseDelayMs ?? 50;
  const maxDelayMs = options.retry?.maxDelayMs ?? 1000;

  /** The effective timeout of a call, in ms from now; undefined = none. */
  function effectiveTimeout(method: DescMethod, requested: number | undefined, unary: boolean): number | undefined {
    let timeout: number | undefined;
    if (requested !== undefined) timeout = requested > 0 ? requested : undefined;
    else timeout = methodPolicyOf(method).timeoutMs ?? (unary ? defaultTimeoutMs : undefined);
    const inbound = currentCallContext()?.deadline;
    if (inbound !== undefined) {
      const remaining = Math.max(0, inbound - Date.now());
      timeout = timeout === undefined ? remaining : Math.min(timeout, remaining);
    }
    return timeout;
  }

  /** Inbound propagated headers, then the caller's; a request id always. */
  function outgoingHeader(header: HeaderInit | undefined): Headers {
    const out = new Headers(currentCallContext()?.header);
    new Headers(header).forEach((value, key) => out.set(key, value));
    if (!out.has("x-request-id")) out.set("x-request-id", randomUUID());
    return out;
  }

  function linkedSignal(signal: AbortSignal | undefined): AbortSignal | undefined {
    const inbound = currentCallContext()?.signal;
    if (!inbound) return signal;
    if (!signal) return inbound;
    return AbortSignal.any([signal, inbound]);
  }

  function unaryAttempt<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    message: MessageShape<I>,
    header: Headers,
    deadline: number | undefined,
    signal: AbortSignal,
  ): Promise<UnaryResponse<I, O>> {
    return new Promise((resolve, reject) => {
      let response: MessageShape<O> | undefined;
      let responseHeader: Headers | undefined;
      const codec = codecOf(method);
      const metadata = headersToMetadata(header);
      // A CLIENT span per attempt, when telemetry is on; it writes its own traceparent.
      const rpc = rpcTelemetry()?.client(method, options.target, metadata);
      const call = grpcClient.makeUnaryRequest(
        methodPath(method),
        codec.serialize,
        codec.deserialize as (b: Buffer) => MessageShape<O>,
        message,
        metadata,
        deadline === undefined ? {} : { deadline },
        (err, value) => {
          if (!err) response = value;
        },
      );
      // Inline, unnamed functions: tsx names every named function made per call.
      const onAbort = { handleEvent: () => call.cancel() };
      signal.addEventListener("abort", onAbort);
      call.on("metadata", (md: grpc.Metadata) => (responseHeader = metadataToHeaders(md)));
      call.on("status", (status: grpc.StatusObject) => {
        signal.removeEventListener("abort", onAbort);
        if (rpc) endClientRpc(rpc, status, signal);
        if (status.code !== grpc.status.OK || response === undefined) {
          reject(
            status.code === grpc.status.OK
              ? new ConnectError("protocol error: missing output message for unary method", Code.Unimplemented)
              : errorFromStatus(status),
          );
          return;
        }
        resolve({
          stream: false,
          service: method.parent,
          method,
          header: responseHeader ?? new Headers(),
          message: response,
          trailer: metadataToHeaders(status.metadata),
        });
      });
    });
  }

  const transport: MeshTransport = {
    grpcClient,
    close: () => grpcClient.close(),

    async unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeaderInit | undefined,
      input: MessageInitShape<I>,
      contextValues?: ReturnType<typeof createContextValues>,
    ): Promise<UnaryResponse<I, O>> {
      const timeout = effectiveTimeout(method, timeoutMs, true);
      const idempotent = methodPolicyOf(method).idempotent;
      return runUnary<I, O>({
        interceptors: options.interceptors,
        signal: linkedSignal(signal),
        timeoutMs: timeout,
        req: {
          stream: false,
          service: method.parent,
          method,
          requestMethod: "POST",
          url: `${options.target}${methodPath(method)}`,
          header: outgoingHeader(header),
          contextValues: contextValues ?? createContextValues(),
          message: input,
        },
        next: async (req) => {
          const deadline = timeout === undefined ? undefined : Date.now() + timeout;
          for (let attempt = 1; ; attempt++) {
            try {
              return await unaryAttempt(req.method, req.message, req.header, deadline, req.signal);
            } catch (e) {
              const retryable =
                idempotent && e instanceof ConnectError && e.code === Code.Unavailable && attempt < maxAttempts;
              if (!retryable || req.signal.aborted) throw e;
              // Full jitter: spread retries of many callers over the window.
              const delay = Math.random() * Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1));
              if (deadline !== undefined && Date.now() + delay >= deadline) throw e;
              await sleep(delay, req.signal);
              if (req.signal.aborted) throw e;
            }
          }
        },
      });
    },

    async stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeaderInit | undefined,
      input: AsyncIterable<MessageInitShape<I>>,
      contextValues?: ReturnType<typeof createContextValues>,
    ): Promise<StreamResponse<I, O>> {
      if (method.methodKind !== "server_streaming") {
        throw new ConnectError(`${method.methodKind} methods are not supported by mesh/client`, Code.Unimplemented);
      }
      const timeout = effectiveTimeout(method, timeoutMs, false);
      return runStreamingCall<I, O>({
        interceptors: options.interceptors,
        signal: linkedSignal(signal),
        timeoutMs: timeout,
        req: {
          stream: true,
          service: method.parent,
          method,
          requestMethod: "POST",
          url: `${options.target}${methodPath(method)}`,
          header: outgoingHeader(header),
          contextValues: contextValues ?? createContextValues(),
          message: input,
        },
        next: async (req) => {
          let request: MessageShape<I> | undefined;
          for await (const m of req.message) {
            if (request !== undefined) {
              throw new ConnectError("server-streaming call with more than one request", Code.InvalidArgument);
            }
            request = m;
          }
          if (request === undefined) {
            throw new ConnectError("server-streaming call without a request", Code.InvalidArgument);
          }
          const deadline = timeout === undefined ? undefined : Date.now() + timeout;
          return openServerStream(req.method, request, req.header, deadline, req.signal);
        },
      });
    },
  };

  function openServerStream<I extends DescMessage, O extends DescMessage>(
    method: DescMethodStreaming<I, O>,
    request: MessageShape<I>,
    header: Headers,
    deadline: number | undefined,
    signal: AbortSignal,
  ): Promise<StreamResponse<I, O>> {
    const codec = codecOf(method);
    const metadata = headersToMetadata(header);
    const rpc = rpcTelemetry()?.client(method, options.target, metadata);
    const call = grpcClient.makeServerStreamRequest(
      methodPath(method),
      codec.serialize,
      codec.deserialize as (b: Buffer) => MessageShape<O>,
      request,
      metadata,
      deadline === undefined ? {} : { deadline },
    );
    const onAbort = () => call.cancel();
    signal.addEventListener("abort", onAbort);

    // Messages wait here until read; the stream pauses while too many wait.
    const queue: MessageShape<O>[] = [];
    const highWater = 16;
    let final: grpc.StatusObject | undefined;
    let wake: (() => void) | undefined;
    const trailer = new Headers();

    call.on("data", (m: MessageShape<O>) => {
      queue.push(m);
      if (queue.length >= highWater) call.pause();
      wake?.();
    });
    call.on("error", () => {
      /* reported through "status" */
    });

    return new Promise((resolve, reject) => {
      let settled = false;
      const respond = (responseHeader: Headers) => {
        if (settled) return;
        settled = true;
        resolve({
          stream: true,
          service: method.parent,
          method,
          header: responseHeader,
          trailer,
          message: {
            [Symbol.asyncIterator]() {
              return {
                async next(): Promise<IteratorResult<MessageShape<O>>> {
                  for (;;) {
                    if (queue.length > 0) {
                      const value = queue.shift()!;
                      if (queue.length < highWater / 2) call.resume();
                      return { done: false, value };
                    }
                    if (final) {
                      if (final.code !== grpc.status.OK) throw errorFromStatus(final);
                      return { done: true, value: undefined };
                    }
                    await new Promise<void>((r) => (wake = r));
                    wake = undefined;
                  }
                },
              };
            },
          },
        });
      };
      call.on("metadata", (md: grpc.Metadata) => respond(metadataToHeaders(md)));
      call.on("status", (status: grpc.StatusObject) => {
        signal.removeEventListener("abort", onAbort);
        if (rpc) endClientRpc(rpc, status, signal);
        metadataToHeaders(status.metadata).forEach((v, k) => trailer.set(k, v));
        final = status;
        wake?.();
        // Trailers-only: an error before any header is the call's error.
        if (!settled && status.code !== grpc.status.OK) {
          settled = true;
          reject(errorFromStatus(status));
        } else {
          respond(new Headers());
        }
      });
    });
  }

  return transport;
}

const pool = new Map<string, MeshTransport>();
const unpooled = new Set<MeshTransport>();

/**
 * A typed client for `service` at `target`. Clients of one target share a
 * channel (one HTTP/2 connection per backend); options with interceptors or
 * channel settings get a channel of their own. closeMeshClients() closes all.
 */
export function createMeshClient<S extends DescService>(
  service: S,
  target: string,
  options: Omit<MeshTransportOptions, "target"> = {},
): Client<S> {
  const shareable =
    options.credentials === undefined && options.channelOptions === undefined && !options.interceptors?.length;
  if (!shareable) {
    const transport = createMeshTransport({ ...options, target });
    unpooled.add(transport);
    return createClient(service, transport);
  }
  const key = `${target}|${options.defaultTimeoutMs ?? ""}|${JSON.stringify(options.retry ?? {})}`;
  let transport = pool.get(key);
  if (!transport) {
    transport = createMeshTransport({ ...options, target });
    pool.set(key, transport);
  }
  return createClient(service, transport);
}

/** Closes every channel createMeshClient opened; later calls open new ones. */
export function closeMeshClients(): void {
  for (const t of [...pool.values(), ...unpooled]) t.close();
  pool.clear();
  unpooled.clear();
}
