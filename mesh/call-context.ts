/**
 * The inbound call a piece of code is running for, carried across awaits with
 * AsyncLocalStorage, so that a downstream mesh client call made anywhere inside
 * a handler inherits the caller's deadline, cancellation, request id, trace
 * context and identity without threading them through every function.
 *
 * This is the process's one AsyncLocalStorage. Besides the call context it
 * carries the OpenTelemetry context (mesh/telemetry/context-manager.ts keeps
 * OpenTelemetry's context here instead of in a storage of its own) and the
 * request id of an event being handled (mesh/telemetry/request-context.ts).
 * Why one: Node 20 copies every enabled storage's value onto every promise and
 * async resource it creates, so each extra storage costs on every await of every
 * call; and an inbound call then enters its call context and its SERVER span in
 * one step instead of two nested ones.
 *
 * API
 *   PROPAGATED_HEADERS: readonly string[]     metadata keys passed on downstream
 *   interface CallContext { deadline?: number; signal?: AbortSignal; header: Headers }
 *   runInboundCall(ctx, trace, fn): T         mesh/server wraps every handler in it
 *   runWithCallContext(ctx, fn): T            a new call context; trace and request id kept
 *   currentCallContext(): CallContext | undefined
 *   callContextFromHandler(ctx: HandlerContext): CallContext
 *   runWithTraceContext(trace, fn, ...args), currentTraceContext()     for mesh/telemetry
 *   runWithRequestId(id, fn), currentScopeRequestId()                  for mesh/telemetry
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { HandlerContext } from "@connectrpc/connect";

/** Request metadata that follows a call from service to service. */
export const PROPAGATED_HEADERS: readonly string[] = [
  "x-request-id",
  "traceparent",
  "tracestate",
  "baggage",
  "x-mesh-user-id",
  "x-mesh-user-role",
];

/** What a downstream call inherits from the inbound call. */
export interface CallContext {
  /** Absolute deadline (epoch milliseconds) of the inbound call, if it has one. */
  deadline?: number;
  /** Fires when the inbound call is cancelled, times out or completes. */
  signal?: AbortSignal;
  /** Only the propagated headers of the inbound call. */
  header: Headers;
}

/**
 * What the storage holds for the work in progress. Immutable: a change makes a new
 * scope for the function it runs, so nothing leaks back to the caller.
 */
class Scope {
  constructor(
    readonly call: CallContext | undefined,
    /** An OpenTelemetry Context (opaque here: mesh/ does not depend on OpenTelemetry). */
    readonly trace: unknown,
    readonly requestId: string | undefined,
  ) {}
}

const storage = new AsyncLocalStorage<Scope>();

/**
 * Runs the handler of an inbound call: a scope of its own, with its call context and the
 * trace context of its SERVER span (undefined when telemetry is off). Nothing of the scope
 * the server happened to be in carries over.
 */
export function runInboundCall<T>(ctx: CallContext, trace: unknown, fn: () => T): T {
  return storage.run(new Scope(ctx, trace, undefined), fn);
}

/**
 * Runs `fn` with `ctx` as the current call context, keeping the trace context and the
 * request id: e.g. the order saga detaches from PlaceOrder's deadline but stays in its trace.
 */
export function runWithCallContext<T>(ctx: CallContext, fn: () => T): T {
  const outer = storage.getStore();
  return storage.run(new Scope(ctx, outer?.trace, outer?.requestId), fn);
}

/** The call context of the inbound call being handled, if any. */
export function currentCallContext(): CallContext | undefined {
  return storage.getStore()?.call;
}

/** For mesh/telemetry's context manager: runs `fn(...args)` with `trace` as the active trace context. */
export function runWithTraceContext<A extends unknown[], R>(trace: unknown, fn: (...args: A) => R, ...args: A): R {
  const outer = storage.getStore();
  return storage.run(new Scope(outer?.call, trace, outer?.requestId), fn, ...args);
}

/** For mesh/telemetry's context manager: the active trace context, if one was set. */
export function currentTraceContext(): unknown {
  return storage.getStore()?.trace;
}

/** For mesh/telemetry's request context: runs `fn` as part of request `requestId` (an event being handled). */
export function runWithRequestId<T>(requestId: string, fn: () => T): T {
  const outer = storage.getStore();
  return storage.run(new Scope(outer?.call, outer?.trace, requestId), fn);
}

/** The request id set by runWithRequestId, if any (not the inbound call's header). */
export function currentScopeRequestId(): string | undefined {
  return storage.getStore()?.requestId;
}

/**
 * For OpenTelemetry's attach(): makes `trace` the active trace context of the current
 * synchronous execution and what it schedules, until `restore` is called.
 */
export function enterTraceContext(trace: unknown): { restore(): void } {
  const outer = storage.getStore();
  storage.enterWith(new Scope(outer?.call, trace, outer?.requestId));
  return { restore: () => storage.enterWith(outer as Scope) };
}

/**
 * The part of a handler context that downstream calls inherit. The headers
 * and the signal are read on first use: most handlers make no downstream call.
 */
export function callContextFromHandler(ctx: HandlerContext): CallContext {
  return new HandlerCallContext(ctx);
}

// A class rather than an object literal with getters: nothing is made per
// call but the instance (see mesh/handler-context on per-call functions).
class HandlerCallContext implements CallContext {
  readonly deadline: number | undefined;
  private picked?: Headers;

  constructor(private readonly ctx: HandlerContext) {
    const remaining = ctx.timeoutMs();
    this.deadline = remaining === undefined ? undefined : Date.now() + remaining;
  }

  get signal(): AbortSignal {
    return this.ctx.signal;
  }

  get header(): Headers {
    if (!this.picked) {
      this.picked = new Headers();
      for (const key of PROPAGATED_HEADERS) {
        const value = this.ctx.requestHeader.get(key);
        if (value !== null) this.picked.set(key, value);
      }
    }
    return this.picked;
  }
}
