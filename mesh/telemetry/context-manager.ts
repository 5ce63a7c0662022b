// The OpenTelemetry context manager of a mesh process: OpenTelemetry's active context lives
// in mesh/call-context's AsyncLocalStorage, beside the inbound call, instead of in a storage
// of its own (what the SDK's AsyncLocalStorageContextManager would make).
//
// Why: Node 20 copies the value of every enabled AsyncLocalStorage onto every promise and
// async resource created, so a second storage costs a little on every await of every call,
// with telemetry on or off once it was enabled; and mesh/server enters a call's context and
// its SERVER span in one step (runInboundCall) instead of two nested ones.
//
// Extends the SDK's manager only to inherit bind() (functions and event emitters), which
// goes through with(); the storage the base class makes is never used, so never enabled.
import { ROOT_CONTEXT, type Context } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { currentTraceContext, enterTraceContext, runWithTraceContext } from "../call-context.js";

/**
 * A trace context made only when something asks for it: what mesh/server hands a handler
 * when spans are not recorded (rpc-telemetry.ts). A non-recording SERVER span has no
 * attributes, timestamps or processors; all it is for is its ids, so a handler that logs
 * nothing, calls nothing downstream and emits no event (a leaf like GetProduct) never
 * pays for extracting the traceparent or making the span.
 */
export abstract class DeferredTraceContext {
  /** The context, made on the first call; the same one after. */
  abstract resolve(): Context;
}

export class MeshContextManager extends AsyncLocalStorageContextManager {
  override active(): Context {
    const trace = currentTraceContext();
    if (trace === undefined) return ROOT_CONTEXT;
    return trace instanceof DeferredTraceContext ? trace.resolve() : (trace as Context);
  }

  override with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    context: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    const cb = thisArg == null ? fn : (fn.bind(thisArg) as F);
    return runWithTraceContext(context, cb, ...args);
  }

  override attach(context: Context): { dispose(): void } {
    const entered = enterTraceContext(context);
    let disposed = false;
    return {
      dispose: () => {
        if (disposed) return;
        disposed = true;
        entered.restore();
      },
    };
  }

  override enable(): this {
    return this;
  }

  /** The storage is mesh's and stays: disabling only stops OpenTelemetry from using it. */
  override disable(): this {
    return this;
  }
}
