// Durable pull consumers that apply each event exactly once to the service's database.
//
// Per message: read pm-event-id, decode the payload, then in ONE Postgres transaction
// insert (consumer, event id) into the inbox and run the handler. If the inbox row was
// already there the handler is skipped: a redelivered event changes nothing. Commit, then
// ack. A crash between commit and ack redelivers the message and the inbox absorbs it.
// Messages already waiting are handled in batches, one transaction per batch, so a commit
// (an fsync) is paid per batch rather than per event; a batch that fails is redone one
// message per transaction. Only a handler's database writes are exactly-once: the handler
// itself may run more than once for an event (retries, a redone batch).
//
// Batch handler (optional `handleBatch`): when a batch transaction has two or more new
// events, they go to handleBatch(tx, events) in one call instead of to `handler` one by
// one, so a context can apply them with one statement rather than one per event (every
// round trip costs CPU in the service, the driver and the backend). It must have the same
// effects as `handler` on each event in order; `handler` still takes a lone new event and
// the one-message transactions of a redone batch, so a poison event fails, retries and
// dead-letters alone. Each event keeps its own CONSUMER span `process <subject>` in its own
// trace, open while the batch runs (BatchEvent.inTrace runs code in it: build there what
// carries the trace on, such as an outbox row); the batch itself runs in a span
// `batch <consumer>` in the first event's trace, linked to the other events' spans, as
// mesh/coalesce.ts does for a batch call (one statement cannot belong to N traces). Hooks
// and stats stay per event.
//
// Failures: nak with a growing delay. On the maxDeliver-th delivery (or at once for a
// payload that does not decode, a missing event id, or a PermanentEventError) the message
// is copied to the dead-letter stream with the reason and then terminated. The server-side
// max_deliver stays unlimited so a message is never dropped silently: if publishing the
// dead letter fails, the message is nak'ed and tried again.
//
// Messages arrive through consume()'s callback into a local queue worked by `concurrency`
// workers, rather than through its async iterator: stopping the iterator drops what it
// has buffered, whereas our own queue lets stop() finish the handlers in flight and hand
// every unstarted message straight back to the server (nak) for another replica.
import { fromBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { currentScopeRequestId, currentTraceContext, runWithRequestId, runWithTraceContext } from "../call-context.js";
import { runInBatchSpan } from "../telemetry/batch-span.js";
import { withConsumerSpan } from "../telemetry/trace-context.js";
import {
  AckPolicy,
  DeliverPolicy,
  nanos,
  ReplayPolicy,
  type ConsumerConfig,
  type ConsumerInfo,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "nats";
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { publishDeadLetter } from "./dead-letter.js";
import type { EventsDb, EventsTx } from "./db.js";
import { AGGREGATE_ID, EVENT_ID, EVENT_TYPE, MSG_ID, msgHdrsToRecord, TRACEPARENT } from "./headers.js";
import { recordInbox, recordInboxMany } from "./inbox.js";
import { assertDurableName, eventSubject, streamForType } from "./naming.js";
import { isNotFound } from "./streams.js";
import type { InboxTable } from "./tables.js";

/** How long the server waits for an ack before redelivering, unless the consumer says. */
export const DEFAULT_ACK_WAIT_MS = 30_000;
/** Deliveries before dead-lettering, unless the consumer (or EVENT_MAX_DELIVER) says. */
export const DEFAULT_MAX_DELIVER = 5;

export interface EventMeta {
  /** pm-event-id (falls back to Nats-Msg-Id): the inbox key. */
  eventId: string;
  eventType: string;
  subject: string;
  stream: string;
  streamSeq: number;
  /** 1 on the first delivery. */
  deliveryCount: number;
  aggregateId?: string;
  traceparent?: string;
  headers: Record<string, string>;
  /** When the stream stored the message. */
  publishedAt: Date;
}

export type EventHandler<Desc extends DescMessage> = (tx: EventsTx, event: MessageShape<Desc>, meta: EventMeta) => Promise<void>;

/** One new event of a batch, as handleBatch gets it. */
export interface BatchEvent<Desc extends DescMessage> {
  event: MessageShape<Desc>;
  meta: EventMeta;
  /**
   * Runs `fn` in this event's CONSUMER span (its trace and request id), where `handler`
   * would have run: build there what carries the trace on (outboxEvent reads the active
   * trace into the event's headers) or logs on the event's behalf.
   */
  inTrace<T>(fn: () => T): T;
}

/**
 * Applies two or more new events of one batch, in stream order, in the inbox's transaction:
 * the same effects as `handler` on each in turn, in fewer statements. Throwing fails the whole
 * batch, which is then redone one message per transaction through `handler`.
 */
export type BatchEventHandler<Desc extends DescMessage> = (tx: EventsTx, events: BatchEvent<Desc>[]) => Promise<void>;

/** Thrown by a handler when retrying cannot help: the message goes to the dead letters at once. */
export class PermanentEventError extends Error {
  override name = "PermanentEventError";
}

export interface ConsumerHooks {
  onHandled?(meta: EventMeta, durationMs: number): void;
  onDuplicate?(meta: EventMeta): void;
  onRetry?(meta: EventMeta, error: unknown, delayMs: number): void;
  onDeadLetter?(meta: EventMeta, reason: string): void;
  /** Infrastructure trouble (dead-letter publish failed, consumer update refused, ...). */
  onError?(error: unknown): void;
}

export interface ConsumerOptions<Desc extends DescMessage> {
  /** Durable name, unique per stream: e.g. `user-award-points`. Replicas share it. */
  name: string;
  /** The event type consumed; its full name is the subject. */
  event: Desc;
  handler: EventHandler<Desc>;
  /**
   * Optional: the new events of a batch transaction in one call when there are two or more
   * (see BatchEventHandler); `handler` takes lone events and redone batches.
   */
  handleBatch?: BatchEventHandler<Desc>;
  db: EventsDb;
  inbox: InboxTable;
  js: JetStreamClient;
  /** Subject prefix (NATS_SUBJECT_PREFIX). */
  prefix?: string;
  /** Default: the stream of the event's package (see naming.ts). */
  stream?: string;
  /** Default: `${prefix}${event.typeName}`. */
  subject?: string;
  /** Deliveries before the message is dead-lettered. Default 5. */
  maxDeliver?: number;
  /** Delay before redelivery after a failure; options or a function of the failed delivery count. */
  backoff?: BackoffOptions | ((deliveryCount: number) => number);
  /** Server waits this long for an ack before redelivering. Default 30 s. */
  ackWaitMs?: number;
  /** Unacknowledged messages the server lets this consumer hold. Default 100. */
  maxAckPending?: number;
  /** Batches handled at once in this process. Default 1 (stream order, except retries). */
  concurrency?: number;
  /**
   * Messages already received that one transaction handles together (one commit for many
   * events; redone one by one if any fails). 1 = a transaction per message. Default 32.
   */
  batchSize?: number;
  /** Where a new durable starts. Default "all": a service that starts late still sees earlier events. */
  deliverPolicy?: "all" | "new";
  hooks?: ConsumerHooks;
}

interface Prepared<Desc extends DescMessage> {
  m: JsMsg;
  meta: EventMeta;
  event: MessageShape<Desc>;
}

export interface ConsumerStats {
  /** Transactions run (batches, plus one per message when a batch was redone). */
  transactions: number;
  handled: number;
  duplicates: number;
  retries: number;
  deadLettered: number;
  inFlight: number;
  queued: number;
}

export interface RunningConsumer {
  readonly name: string;
  readonly stream: string;
  stats(): ConsumerStats;
  /** Stops pulling, waits for handlers in flight, naks unstarted messages. */
  stop(): Promise<void>;
  /** Resolves when the consumer has stopped. */
  readonly closed: Promise<void>;
}

/** Creates the durable consumer if needed (or updates its settings) and starts handling. */
export async function startConsumer<Desc extends DescMessage>(opts: ConsumerOptions<Desc>): Promise<RunningConsumer> {
  assertDurableName(opts.name);
  const prefix = opts.prefix ?? "";
  const stream = opts.stream ?? streamForType(opts.event.typeName, prefix).name;
  const subject = opts.subject ?? eventSubject(opts.event.typeName, prefix);
  const maxDeliver = opts.maxDeliver ?? DEFAULT_MAX_DELIVER;
  if (!(maxDeliver >= 1)) throw new Error("maxDeliver must be at least 1");
  const maxAckPending = opts.maxAckPending ?? 100;
  const concurrency = Math.max(1, opts.concurrency ?? 1);
  const batchSize = Math.max(1, opts.batchSize ?? 32);
  const delayFor = typeof opts.backoff === "function" ? opts.backoff : (n: number) => backoffDelay(n, opts.backoff as BackoffOptions);
  const hooks = opts.hooks ?? {};

  const jsm = await opts.js.jetstreamManager();
  await ensureConsumer(jsm, stream, {
    durable_name: opts.name,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: opts.deliverPolicy === "new" ? DeliverPolicy.New : DeliverPolicy.All,
    replay_policy: ReplayPolicy.Instant,
    filter_subject: subject,
    max_deliver: -1,
    ack_wait: nanos(opts.ackWaitMs ?? DEFAULT_ACK_WAIT_MS),
    max_ack_pending: maxAckPending,
  }, hooks);

  const stats: ConsumerStats = { transactions: 0, handled: 0, duplicates: 0, retries: 0, deadLettered: 0, inFlight: 0, queued: 0 };
  const queue: JsMsg[] = [];
  let stopping = false;
  let signal: (() => void) | undefined;
  const notify = () => {
    const s = signal;
    signal = undefined;
    s?.();
  };

  const pull = await opts.js.consumers.get(stream, opts.name);
  const messages: ConsumerMessages = await pull.consume({
    max_messages: Math.min(maxAckPending, 64),
    callback: (m) => {
      if (stopping) {
        m.nak();
        return;
      }
      queue.push(m);
      stats.queued = queue.length;
      notify();
    },
  });

  async function deadLetter(m: JsMsg, meta: EventMeta, reason: string): Promise<void> {
    try {
      await publishDeadLetter(opts.js, m, { consumer: opts.name, error: reason, eventId: meta.eventId || `seq-${meta.streamSeq}`, prefix });
      m.term();
      stats.deadLettered++;
      hooks.onDeadLetter?.(meta, reason);
    } catch (err) {
      hooks.onError?.(err);
      m.nak(delayFor(m.info.deliveryCount));
    }
  }

  /** Reads headers and payload; dead-letters what can never be handled. */
  async function prepare(m: JsMsg): Promise<Prepared<Desc> | undefined> {
    const headers = msgHdrsToRecord(m.headers);
    const meta: EventMeta = {
      eventId: headers[EVENT_ID] || headers[MSG_ID] || "",
      eventType: headers[EVENT_TYPE] || opts.event.typeName,
      subject: m.subject,
      stream: m.info.stream,
      streamSeq: m.info.streamSequence,
      deliveryCount: m.info.deliveryCount,
      aggregateId: headers[AGGREGATE_ID],
      traceparent: headers[TRACEPARENT],
      headers,
      publishedAt: new Date(Math.floor(m.info.timestampNanos / 1e6)),
    };
    if (!meta.eventId) return void (await deadLetter(m, meta, `no ${EVENT_ID} or ${MSG_ID} header: cannot deduplicate`));
    if (meta.eventType !== opts.event.typeName) {
      return void (await deadLetter(m, meta, `${EVENT_TYPE} is ${meta.eventType}, consumer ${opts.name} expects ${opts.event.typeName}`));
    }
    try {
      return { m, meta, event: fromBinary(opts.event, m.data) };
    } catch (err) {
      return void (await deadLetter(m, meta, `cannot decode ${opts.event.typeName}: ${errorText(err)}`));
    }
  }

  /**
   * Handles a batch optimistically in ONE transaction (one commit, one fsync, for many
   * events). If anything in it fails, the whole batch rolls back and each message is then
   * handled in a transaction of its own, so one bad event costs its batch a second pass
   * but never holds back or takes down the others. Acks go out after the commits.
   */
  async function handleBatch(msgs: JsMsg[]): Promise<void> {
    const started = Date.now();
    const items: (Prepared<Desc> & { outcome?: "fresh" | "duplicate"; error?: unknown })[] = [];
    for (const m of msgs) {
      const p = await prepare(m);
      if (p) items.push(p);
    }
    if (items.length === 0) return;
    const handleIn = (tx: EventsTx, item: Prepared<Desc>) => {
      // Run the handler in the publisher's trace, as a CONSUMER span `process <subject>` with
      // the request id restored (no-ops until telemetry registers a tracer and propagator).
      return withConsumerSpan(item.meta.subject, item.meta.headers, spanAttributes(item), () => opts.handler(tx, item.event, item.meta));
    };
    const run = async (tx: EventsTx, item: Prepared<Desc>) => {
      const entry = { consumer: opts.name, eventId: item.meta.eventId, eventType: item.meta.eventType };
      if (!(await recordInbox(tx, opts.inbox, entry))) return "duplicate" as const;
      await handleIn(tx, item);
      return "fresh" as const;
    };
    let together = false;
    if (items.length > 1) {
      try {
        stats.transactions++;
        const outcomes = await opts.db.transaction(async (tx) => {
          // One INSERT for the batch's inbox rows, then the handlers of the new ones, in order.
          const entries = items.map((item) => ({ consumer: opts.name, eventId: item.meta.eventId, eventType: item.meta.eventType }));
          const fresh = await recordInboxMany(tx, opts.inbox, entries);
          const out: ("fresh" | "duplicate")[] = [];
          const handle: Prepared<Desc>[] = [];
          for (const item of items) {
            // delete: a second copy of an event in the batch is its duplicate.
            const isNew = fresh.delete(item.meta.eventId);
            out.push(isNew ? "fresh" : "duplicate");
            if (isNew) handle.push(item);
          }
          if (opts.handleBatch && handle.length > 1) {
            const handleBatchOf = opts.handleBatch;
            await inConsumerSpans(handle, (events) => handleBatchOf(tx, events));
          } else {
            for (const item of handle) await handleIn(tx, item);
          }
          return out;
        });
        items.forEach((item, i) => (item.outcome = outcomes[i]));
        together = true;
      } catch {
        // fall through: one transaction per message finds the culprit
      }
    }
    if (!together) {
      for (const item of items) {
        try {
          stats.transactions++;
          item.outcome = await opts.db.transaction((tx) => run(tx, item));
        } catch (err) {
          item.error = err;
        }
      }
    }
    for (const item of items) {
      const { m, meta } = item;
      if (item.outcome) {
        m.ack();
        if (item.outcome === "fresh") {
          stats.handled++;
          hooks.onHandled?.(meta, Date.now() - started);
        } else {
          stats.duplicates++;
          hooks.onDuplicate?.(meta);
        }
        continue;
      }
      const err = item.error;
      if (err instanceof PermanentEventError || meta.deliveryCount >= maxDeliver) {
        const why = err instanceof PermanentEventError ? "permanent" : `${meta.deliveryCount} deliveries`;
        await deadLetter(m, meta, `${why}: ${errorText(err)}`);
        continue;
      }
      const delay = delayFor(meta.deliveryCount);
      m.nak(delay);
      stats.retries++;
      hooks.onRetry?.(meta, err, delay);
    }
  }

  function spanAttributes(item: Prepared<Desc>) {
    return { "messaging.consumer.group.name": opts.name, "messaging.message.id": item.meta.eventId };
  }

  /**
   * Runs `fn` once for several events, each still in a CONSUMER span of its own trace (as
   * handleIn would run it), open until `fn` ends and failed if it fails. `fn` itself runs in
   * a span `batch <consumer>` in the first event's trace, linked to the other events' spans
   * (as mesh/coalesce.ts does): its statements belong to one trace, and every event's trace
   * still leads to them.
   */
  async function inConsumerSpans(items: Prepared<Desc>[], fn: (events: BatchEvent<Desc>[]) => Promise<void>): Promise<void> {
    let finish!: () => void;
    let fail!: (err: unknown) => void;
    const done = new Promise<void>((resolve, reject) => ((finish = resolve), (fail = reject)));
    const opened: Promise<{ trace: unknown; requestId: string | undefined }>[] = [];
    const ended: Promise<unknown>[] = [];
    for (const item of items) {
      opened.push(
        new Promise((entered, failed) => {
          const handling = withConsumerSpan(item.meta.subject, item.meta.headers, spanAttributes(item), () => {
            // Here is the event's trace and request id: keep them for inTrace (as mesh/coalesce.ts
            // keeps its callers' traces).
            entered({ trace: currentTraceContext(), requestId: currentScopeRequestId() });
            return done;
          });
          handling.catch(failed); // only matters if the span failed to open
          ended.push(handling.catch(() => undefined)); // fn's failure reaches the caller itself
        }),
      );
    }
    try {
      const spans = await Promise.all(opened);
      const events: BatchEvent<Desc>[] = items.map((item, i) => {
        const { trace: traceContext, requestId } = spans[i]!;
        const inTrace = <T>(run: () => T): T => runWithTraceContext(traceContext, () => (requestId ? runWithRequestId(requestId, run) : run()));
        return { event: item.event, meta: item.meta, inTrace };
      });
      await events[0]!.inTrace(() =>
        runInBatchSpan(`batch ${opts.name}`, spans.map((s) => s.trace), { "messaging.consumer.group.name": opts.name }, () => fn(events)),
      );
      finish();
    } catch (err) {
      fail(err);
      throw err;
    } finally {
      await Promise.all(ended);
    }
  }

  async function worker(): Promise<void> {
    for (;;) {
      if (queue.length === 0) {
        if (stopping) return;
        await new Promise<void>((resolve) => {
          const prev = signal;
          signal = () => {
            prev?.();
            resolve();
          };
        });
        continue;
      }
      const batch = queue.splice(0, batchSize);
      stats.queued = queue.length;
      if (stopping) {
        for (const m of batch) m.nak(); // not started: give them back now rather than after ack_wait
        continue;
      }
      stats.inFlight += batch.length;
      try {
        await handleBatch(batch);
      } catch (err) {
        hooks.onError?.(err);
        for (const m of batch) m.nak(delayFor(m.info.deliveryCount));
      } finally {
        stats.inFlight -= batch.length;
      }
    }
  }

  const workers = Array.from({ length: concurrency }, () => worker());
  let stopPromise: Promise<void> | undefined;
  const stop = () =>
    (stopPromise ??= (async () => {
      stopping = true;
      await messages.close().catch(() => {});
      notify();
      await Promise.all(workers);
    })());
  // If the iterator ends on its own (connection closed, consumer deleted), stop the workers too.
  const closed = messages.closed().then(
    () => stop(),
    (err) => {
      hooks.onError?.(err);
      return stop();
    },
  );

  return {
    name: opts.name,
    stream,
    stats: () => ({ ...stats }),
    stop,
    closed,
  };
}

/** Creates the durable, or brings an existing one's settings up to date. */
export async function ensureConsumer(
  jsm: JetStreamManager,
  stream: string,
  cfg: Partial<ConsumerConfig> & { durable_name: string },
  hooks: Pick<ConsumerHooks, "onError"> = {},
): Promise<ConsumerInfo> {
  let existing: ConsumerInfo | undefined;
  try {
    existing = await jsm.consumers.info(stream, cfg.durable_name);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  if (!existing) {
    try {
      return await jsm.consumers.add(stream, cfg);
    } catch (err) {
      // A replica created it first: read it back.
      existing = await jsm.consumers.info(stream, cfg.durable_name).catch(() => {
        throw err;
      });
    }
  }
  if (cfg.filter_subject && existing.config.filter_subject !== cfg.filter_subject) {
    throw new Error(
      `consumer ${cfg.durable_name} on ${stream} filters ${existing.config.filter_subject}, not ${cfg.filter_subject}: pick another name or delete it`,
    );
  }
  const c = existing.config;
  if (c.ack_wait !== cfg.ack_wait || c.max_ack_pending !== cfg.max_ack_pending || c.max_deliver !== cfg.max_deliver) {
    try {
      return await jsm.consumers.update(stream, cfg.durable_name, {
        ack_wait: cfg.ack_wait,
        max_ack_pending: cfg.max_ack_pending,
        max_deliver: cfg.max_deliver,
      });
    } catch (err) {
      hooks.onError?.(err); // keep running on the old settings
    }
  }
  return existing;
}

function errorText(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}
