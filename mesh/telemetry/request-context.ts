// The request (or event) being handled right now, carried through async calls so a log
// line written deep inside a handler still knows its request id. Trace and span ids come
// from the active OpenTelemetry span; this only holds what OpenTelemetry does not.
import { AsyncLocalStorage } from "node:async_hooks";
import { randomUUID } from "node:crypto";
import { currentCallContext } from "../call-context.js";

export interface RequestContext {
  requestId: string;
}

const storage = new AsyncLocalStorage<RequestContext>();

/** Run `fn` as part of the request `requestId` (a fresh id when none is given). */
export function runWithRequestContext<T>(requestId: string | undefined, fn: () => T): T {
  return storage.run({ requestId: requestId || randomUUID() }, fn);
}

export function currentRequestContext(): RequestContext | undefined {
  return storage.getStore();
}

/**
 * The request id of the work in progress: set here by an event consumer (withExtractedContext)
 * or, inside an RPC handler, the inbound x-request-id that mesh/server keeps in its call context.
 */
export function currentRequestId(): string | undefined {
  return storage.getStore()?.requestId ?? currentCallContext()?.header.get("x-request-id") ?? undefined;
}
