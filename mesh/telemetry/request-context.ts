// The request (or event) being handled right now, carried through async calls so a log
// line written deep inside a handler still knows its request id. Trace and span ids come
// from the active OpenTelemetry span; this only holds what OpenTelemetry does not. It rides
// in mesh/call-context's one AsyncLocalStorage (see there why one).
import { randomUUID } from "node:crypto";
import { currentCallContext, currentScopeRequestId, runWithRequestId } from "../call-context.js";

export interface RequestContext {
  requestId: string;
}

/** Run `fn` as part of the request `requestId` (a fresh id when none is given). */
export function runWithRequestContext<T>(requestId: string | undefined, fn: () => T): T {
  return runWithRequestId(requestId || randomUUID(), fn);
}

/** The request an event consumer set with runWithRequestContext, if any. */
export function currentRequestContext(): RequestContext | undefined {
  const requestId = currentScopeRequestId();
  return requestId === undefined ? undefined : { requestId };
}

/**
 * The request id of the work in progress: set here by an event consumer (withExtractedContext)
 * or, inside an RPC handler, the inbound x-request-id that mesh/server keeps in its call context.
 */
export function currentRequestId(): string | undefined {
  return currentScopeRequestId() ?? currentCallContext()?.header.get("x-request-id") ?? undefined;
}
