// The consumer side of exactly-once effects: record (consumer, event id) in the same
// transaction as the handler's writes.
import { lt } from "drizzle-orm";
import type { EventsDb, EventsTx } from "./db.js";
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
  const inserted = await tx.insert(inbox).values(entries).onConflictDoNothing().returning({ eventId: inbox.eventId });
  return new Set(inserted.map((r) => r.eventId));
}

/**
 * Deletes inbox rows older than `olderThanMs`; returns how many went. Keep them longer than
 * any redelivery or replay can come back: at least the streams' max age, in practice weeks.
 */
export async function pruneInbox(db: EventsDb, inbox: InboxTable, olderThanMs: number): Promise<number> {
  const gone = await db
    .delete(inbox)
    .where(lt(inbox.processedAt, new Date(Date.now() - olderThanMs)))
    .returning({ eventId: inbox.eventId });
  return gone.length;
}
