// Whether this process records spans (startTracing found something to export them to).
// A light module of its own, like rpc-hooks.ts, so that code which only asks (db-spans.ts)
// does not load the tracing SDK.
let recording = false;

/** True while startTracing() runs with an exporter: spans are recorded, not just carried. */
export function spansRecorded(): boolean {
  return recording;
}

/** Set by startTracing() and its shutdown. */
export function setSpansRecorded(on: boolean): void {
  recording = on;
}
