/**
 * The inbound call a piece of code is running for, carried across awaits with
 * AsyncLocalStorage, so that a downstream mesh client call made anywhere inside
 * a handler inherits the caller's deadline, cancellation, request id, trace
 * context and identity without threading them through every function.
 *
 * API
 *   PROPAGATED_HEADERS: readonly string[]     metadata keys passed on downstream
 *   interface CallContext { deadline?: number; signal?: AbortSignal; header: Headers }
 *   runWithCallContext(ctx, fn): T            mesh/server wraps every handler in it
 *   currentCallContext(): CallContext | undefined
 *   callContextFromHandler(ctx: HandlerContext): CallContext
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

const storage = new AsyncLocalStorage<CallContext>();

/** Runs `fn` with `ctx` as the current call context. */
export function runWithCallContext<T>(ctx: CallContext, fn: () => T): T {
  return storage.run(ctx, fn);
}

/** The call context of the inbound call being handled, if any. */
export function currentCallContext(): CallContext | undefined {
  return storage.getStore();
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
