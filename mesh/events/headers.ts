// Header names carried by every event message, and conversions between the outbox's
// JSON headers and NATS MsgHdrs.
import { headers as natsHeaders, type MsgHdrs } from "nats";

/** Set by nats.js from the publish `msgID` option; the server dedupes on it. */
export const MSG_ID = "Nats-Msg-Id";
/** The event id; stays the same when a dead letter is replayed (the inbox dedupes on it). */
export const EVENT_ID = "pm-event-id";
/** Full protobuf type name of the payload. */
export const EVENT_TYPE = "pm-event-type";
/** Aggregate the event belongs to (order id, user id, ...). */
export const AGGREGATE_ID = "pm-aggregate-id";
export const TRACEPARENT = "traceparent";
export const TRACESTATE = "tracestate";

// Added to a message when it is dead-lettered.
export const DLQ_CONSUMER = "pm-dlq-consumer";
export const DLQ_ERROR = "pm-dlq-error";
export const DLQ_SUBJECT = "pm-dlq-subject";
export const DLQ_STREAM = "pm-dlq-stream";
export const DLQ_STREAM_SEQ = "pm-dlq-stream-seq";
export const DLQ_DELIVERIES = "pm-dlq-deliveries";
export const DLQ_FAILED_AT = "pm-dlq-failed-at";
// Added to a replayed message.
export const REPLAYED_FROM = "pm-replayed-from";

/** NATS header values are one line of text; errors are not. Keep them one bounded line. */
export function headerValue(text: string, max = 1024): string {
  const line = text.replace(/[\r\n]+/g, " ").trim();
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

export function toMsgHdrs(record: Record<string, string>): MsgHdrs {
  const h = natsHeaders();
  for (const [k, v] of Object.entries(record)) {
    if (v !== undefined && v !== "") h.set(k, headerValue(v, 4096));
  }
  return h;
}

/** All headers as a plain record (last value wins for repeated keys). */
export function msgHdrsToRecord(h: MsgHdrs | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h) return out;
  for (const [k, values] of h) {
    if (values.length > 0) out[k] = values[values.length - 1];
  }
  return out;
}
