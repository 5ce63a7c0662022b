// The consumer side of exactly-once effects: record (consumer, event id) in the same
// transaction as the handler's writes; and forget them once no copy of the event can
// come back (pruneInbox, startInboxPruner), so the table does not grow for ever.
import { sql } from "drizzle-orm";
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { rowsOf, type EventsDb, type EventsTx } from "./db.js";
import { deleteInBatches, PRUNE_BATCH } from "./prune.js";
import type { InboxTable } from "./tables.js";

/**
 * Inserts the inbox row; true when this is the first time `consumer` sees `eventId`,
 * false when a previous delivery already committed (skip the handler, just ack).
 * A concurrent delivery of the same event blocks on the primary key until the first
 * transaction ends, then sees its row: only one of them runs the handler's effects.
 */
export async function recordInbox(
  tx: EventsTx,
  inbox: InboxTable,
  entry: { consumer: string; eventId: string; eventType: string },
): Promise<boolean> {
  const inserted = await tx.insert(inbox).values(entry).onConflictDoNothing().returning({ eventId: inbox.eventId });
  return inserted.length > 0;
}

/**
 * The batch form: one INSERT for many entries of one consumer. Returns the event ids that
 * were new (an id twice in `entries` counts once).
 */
export async function recordInboxMany(
  tx: EventsTx,
  inbox: InboxTable,
  entries: { consumer: string; eventId: string; eventType: string }[],
): Promise<Set<string>> {
  if (entries.length === 0) return new Set();
  // One text for any number of entries (not drizzle's `values ($1, $2, $3), ...`): statements
  // are prepared per text and connection (mesh/db-prepared.ts), and consumers' batches vary.
  // The rows go in event id order, not delivery order: each insert takes the key's unique-index
  // entry until commit, and two batches of one consumer that share two events (a redelivery
  // meeting the first copy, on another replica) would otherwise take them in opposite orders
  // and deadlock. In one order, one batch waits for the other and then skips its events.
  const rows = entries.map((e) => ({ consumer: e.consumer, event_id: e.eventId, event_type: e.eventType }));
  const inserted = rowsOf<{ event_id: string }>(
    await tx.execute(sql`insert into ${inbox} (consumer, event_id, event_type)
      select x.consumer, x.event_id, x.event_type
      from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as x(consumer text, event_id text, event_type text)
      order by x.consumer, x.event_id
      on conflict do nothing
      returning event_id`),
  );
  return new Set(inserted.map((r) => r.event_id));
}

/**
 * Deletes inbox rows older than `olderThanMs` (by the database's clock); returns how many
 * went. In bounded batches that replicas pruning at once never wait on (prune.ts).
 *
 * Keep rows longer than any copy of their event can come back (inboxRetentionFloorMs):
 * once a row is gone, a redelivery of its event is applied again.
 */
export async function pruneInbox(db: EventsDb, inbox: InboxTable, olderThanMs: number, batchSize = PRUNE_BATCH): Promise<number> {
  return deleteInBatches(db, inbox, sql`processed_at < now() - ${olderThanMs} * interval '1 millisecond'`, batchSize);
}

/**
 * How long after its first delivery a copy of an event can still reach a consumer by
 * itself: the relay may publish an event again within JetStream's duplicate window (the
 * server drops those, but only within it, so count it), and the consumer redelivers a
 * failing message up to maxDeliver times, each after its ack wait and its backoff. An
 * inbox retention shorter than this lets a redelivery through twice. (Dead-letter replays
 * and a relay republishing after a long NATS outage are not bounded by anything: the
 * retention is what bounds them, hence days, not this floor.)
 */
export function inboxRetentionFloorMs(opts: {
  duplicateWindowMs: number;
  maxDeliver: number;
  ackWaitMs: number;
  backoff?: BackoffOptions | ((deliveryCount: number) => number);
}): number {
  let total = opts.duplicateWindowMs;
  for (let n = 1; n <= opts.maxDeliver; n++) {
    const delay = typeof opts.backoff === "function" ? opts.backoff(n) : backoffDelay(n, opts.backoff, () => 1);
    total += opts.ackWaitMs + delay;
  }
  return total;
}

export interface InboxPruner {
  /** One pass now (what the timer runs); resolves how many rows went. */
  runOnce(): Promise<number>;
  /** Stops the timer and waits for a pass in progress. */
  stop(): Promise<void>;
}

/**
 * Prunes `inbox` every `intervalMs`, keeping `retentionMs`. The first pass comes within a
 * minute of the start, at a random moment (so a process restarted more often than the
 * interval still prunes, and replicas started together do not prune together).
 */
export function startInboxPruner(options: {
  db: EventsDb;
  inbox: InboxTable;
  retentionMs: number;
  intervalMs: number;
  batchSize?: number;
  onPruned?: (rows: number) => void;
  onError?: (err: unknown) => void;
}): InboxPruner {
  let running: Promise<number> | undefined;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const runOnce = () => {
    running ??= pruneInbox(options.db, options.inbox, options.retentionMs, options.batchSize).finally(() => (running = undefined));
    return running;
  };
  const schedule = (ms: number) => {
    if (stopped) return;
    timer = setTimeout(() => {
      runOnce()
        .then((n) => n > 0 && options.onPruned?.(n), (err) => options.onError?.(err))
        .finally(() => schedule(options.intervalMs));
    }, ms);
    timer.unref?.();
  };
  schedule(Math.random() * Math.min(options.intervalMs, 60_000));
  return {
    runOnce,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running?.catch(() => undefined);
    },
  };
}
