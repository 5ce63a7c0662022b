// Publishing one event message to JetStream with the headers every consumer relies on.
import { randomUUID } from "node:crypto";
import { toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import type { JetStreamClient, PubAck } from "nats";
import { AGGREGATE_ID, EVENT_ID, EVENT_TYPE, toMsgHdrs } from "./headers.js";
import { eventSubject } from "./naming.js";

export interface RawEvent {
  subject: string;
  payload: Uint8Array;
  eventId: string;
  eventType: string;
  aggregateId?: string;
  /** Extra headers (traceparent, tracestate, ...). */
  headers?: Record<string, string>;
  /** Nats-Msg-Id; defaults to the event id. A replay passes a different one. */
  msgId?: string;
}

export interface PublishOptions {
  /** How long to wait for the PubAck. */
  timeoutMs?: number;
}

/**
 * Publishes and waits for the stream's PubAck. Nats-Msg-Id makes a second publish of
 * the same event inside the stream's duplicate window a no-op (`ack.duplicate`).
 */
export async function publishRawEvent(js: JetStreamClient, ev: RawEvent, opts: PublishOptions = {}): Promise<PubAck> {
  const hdrs = toMsgHdrs({
    ...ev.headers,
    [EVENT_ID]: ev.eventId,
    [EVENT_TYPE]: ev.eventType,
    ...(ev.aggregateId ? { [AGGREGATE_ID]: ev.aggregateId } : {}),
  });
  return js.publish(ev.subject, ev.payload, {
    msgID: ev.msgId ?? ev.eventId,
    headers: hdrs,
    timeout: opts.timeoutMs ?? 5000,
  });
}

/**
 * Publishes a protobuf message straight away, bypassing the outbox. For events that do
 * not announce a database change (and for tests); anything that does belongs in the outbox.
 */
export async function publishEvent<Desc extends DescMessage>(
  js: JetStreamClient,
  schema: Desc,
  message: MessageShape<Desc>,
  opts: { eventId?: string; aggregateId?: string; prefix?: string; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<PubAck & { eventId: string }> {
  const eventId = opts.eventId ?? randomUUID();
  const ack = await publishRawEvent(
    js,
    {
      subject: eventSubject(schema.typeName, opts.prefix ?? ""),
      payload: toBinary(schema, message),
      eventId,
      eventType: schema.typeName,
      aggregateId: opts.aggregateId,
      headers: opts.headers,
    },
    { timeoutMs: opts.timeoutMs },
  );
  return { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate, domain: ack.domain, eventId };
}
