// The dead-letter stream: where a message lands after its consumer gave up on it, and
// how an operator lists and replays it.
//
// A dead letter keeps the original payload and headers (pm-event-id among them) and adds
// pm-dlq-* headers: consumer, error, original subject, stream and sequence, deliveries.
// Replay republishes the payload to its original subject with the original headers. All
// consumers on that subject receive it again; every one that already handled the event
// finds pm-event-id in its inbox and skips it, so only the one that failed acts.
import type { JetStreamClient, JetStreamManager, JsMsg, PubAck, StoredMsg } from "nats";
import {
  DLQ_CONSUMER,
  DLQ_DELIVERIES,
  DLQ_ERROR,
  DLQ_FAILED_AT,
  DLQ_STREAM,
  DLQ_STREAM_SEQ,
  DLQ_SUBJECT,
  EVENT_ID,
  EVENT_TYPE,
  headerValue,
  MSG_ID,
  msgHdrsToRecord,
  REPLAYED_FROM,
  toMsgHdrs,
} from "./headers.js";
import { deadLetterStream, deadLetterSubject } from "./naming.js";
import { isNotFound } from "./streams.js";

export interface DeadLetter {
  /** Sequence in the dead-letter stream: what `replayDeadLetter` takes. */
  seq: number;
  consumer: string;
  error: string;
  subject: string;
  stream: string;
  streamSeq: number;
  deliveries: number;
  eventId: string;
  eventType: string;
  failedAt: Date;
  /** The original headers, without the pm-dlq-* ones. */
  headers: Record<string, string>;
  payload: Uint8Array;
}

/** Publishes `msg` to the dead-letter stream on behalf of `consumer`. */
export async function publishDeadLetter(
  js: JetStreamClient,
  msg: JsMsg,
  info: { consumer: string; error: string; eventId: string; prefix?: string },
): Promise<PubAck> {
  const original = msgHdrsToRecord(msg.headers);
  delete original[MSG_ID];
  const hdrs = toMsgHdrs({
    ...original,
    [EVENT_ID]: info.eventId,
    [DLQ_CONSUMER]: info.consumer,
    [DLQ_ERROR]: headerValue(info.error || "unknown error"),
    [DLQ_SUBJECT]: msg.subject,
    [DLQ_STREAM]: msg.info.stream,
    [DLQ_STREAM_SEQ]: String(msg.info.streamSequence),
    [DLQ_DELIVERIES]: String(msg.info.deliveryCount),
    [DLQ_FAILED_AT]: new Date().toISOString(),
  });
  // The id names this very delivery: retrying the publish is deduped, while the same event
  // failing again after a replay (a new stream sequence) gets a dead letter of its own.
  const msgID = `${info.eventId}:dlq:${info.consumer}:${msg.info.stream}:${msg.info.streamSequence}`;
  return js.publish(deadLetterSubject(info.consumer, info.prefix ?? ""), msg.data, { msgID, headers: hdrs });
}

export interface ListDeadLettersOptions {
  prefix?: string;
  /** Only this consumer's dead letters. */
  consumer?: string;
  /** At most this many, oldest first. Default 100. */
  limit?: number;
  /** Start at this dead-letter sequence. */
  fromSeq?: number;
}

/** Lists dead letters, oldest first. */
export async function listDeadLetters(js: JetStreamClient, opts: ListDeadLettersOptions = {}): Promise<DeadLetter[]> {
  const jsm = await js.jetstreamManager();
  const stream = deadLetterStream(opts.prefix ?? "").name;
  const limit = opts.limit ?? 100;
  const wanted = opts.consumer ? deadLetterSubject(opts.consumer, opts.prefix ?? "") : undefined;
  const info = await jsm.streams.info(stream).catch((err) => {
    if (isNotFound(err)) throw new Error(`dead-letter stream ${stream} not found (is the subject prefix right? ensureStreams creates it)`);
    throw err;
  });
  const out: DeadLetter[] = [];
  if (info.state.messages === 0) return out;
  // Dead letters are few; walking sequences keeps this free of consumer state.
  for (let seq = Math.max(info.state.first_seq, opts.fromSeq ?? 0); seq <= info.state.last_seq && out.length < limit; seq++) {
    const m = await getStored(jsm, stream, seq);
    if (!m || (wanted && m.subject !== wanted)) continue;
    out.push(toDeadLetter(m));
  }
  return out;
}

/** One dead letter by its sequence, or undefined. */
export async function getDeadLetter(js: JetStreamClient, seq: number, opts: { prefix?: string } = {}): Promise<DeadLetter | undefined> {
  const jsm = await js.jetstreamManager();
  const m = await getStored(jsm, deadLetterStream(opts.prefix ?? "").name, seq);
  return m ? toDeadLetter(m) : undefined;
}

export interface ReplayOptions {
  prefix?: string;
  /** Delete the dead letter once republished. Default true. */
  remove?: boolean;
}

/**
 * Republishes dead letter `seq` to its original subject with its original headers. The
 * Nats-Msg-Id gets a `:replay:<seq>` suffix so the stream's duplicate window does not
 * swallow it (replaying the same dead letter twice within the window is deduped), while
 * pm-event-id stays the original event id, the key of every consumer's inbox.
 */
export async function replayDeadLetter(js: JetStreamClient, seq: number, opts: ReplayOptions = {}): Promise<PubAck> {
  const jsm = await js.jetstreamManager();
  const stream = deadLetterStream(opts.prefix ?? "").name;
  const stored = await getStored(jsm, stream, seq);
  if (!stored) throw new Error(`dead letter ${seq} not found in stream ${stream}`);
  const dl = toDeadLetter(stored);
  if (!dl.subject) throw new Error(`dead letter ${seq} has no ${DLQ_SUBJECT} header: cannot tell where to replay it`);
  const ack = await js.publish(dl.subject, dl.payload, {
    msgID: `${dl.eventId}:replay:${seq}`,
    headers: toMsgHdrs({ ...dl.headers, [REPLAYED_FROM]: `${stream}:${seq}` }),
  });
  if (opts.remove !== false) await jsm.streams.deleteMessage(stream, seq, false);
  return ack;
}

/** Deletes dead letter `seq` without replaying it. */
export async function discardDeadLetter(js: JetStreamClient, seq: number, opts: { prefix?: string } = {}): Promise<boolean> {
  const jsm = await js.jetstreamManager();
  return jsm.streams.deleteMessage(deadLetterStream(opts.prefix ?? "").name, seq, false);
}

async function getStored(jsm: JetStreamManager, stream: string, seq: number): Promise<StoredMsg | undefined> {
  try {
    return await jsm.streams.getMessage(stream, { seq });
  } catch (err) {
    if (isNotFound(err) || /no message/i.test(String((err as Error).message))) return undefined;
    throw err;
  }
}

function toDeadLetter(m: StoredMsg): DeadLetter {
  const all = msgHdrsToRecord(m.header);
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(all)) {
    if (!k.startsWith("pm-dlq-") && k !== MSG_ID) headers[k] = v;
  }
  return {
    seq: m.seq,
    consumer: all[DLQ_CONSUMER] ?? "",
    error: all[DLQ_ERROR] ?? "",
    subject: all[DLQ_SUBJECT] ?? "",
    stream: all[DLQ_STREAM] ?? "",
    streamSeq: Number(all[DLQ_STREAM_SEQ] ?? 0),
    deliveries: Number(all[DLQ_DELIVERIES] ?? 0),
    eventId: all[EVENT_ID] ?? "",
    eventType: all[EVENT_TYPE] ?? "",
    failedAt: all[DLQ_FAILED_AT] ? new Date(all[DLQ_FAILED_AT]) : m.time,
    headers,
    payload: m.data,
  };
}
