// Drizzle table factories for the outbox and the inbox.
//
// Each service calls these inside its own schema.ts with its own pgSchema, so the
// tables live in the service's schema and its drizzle-kit migrations create them
// like any other table: the migration history stays the single, honest record of
// what the database looks like. Nothing here needs a trigger (the relay is woken by a
// pg_notify issued in the same transaction as the insert, see outbox.ts), so there is
// no hand-written SQL that drizzle-kit would not know about.
import { sql } from "drizzle-orm";
import {
  bigserial,
  customType,
  index,
  jsonb,
  primaryKey,
  text,
  timestamp,
  uuid,
  type PgSchema,
} from "drizzle-orm/pg-core";

/** Protobuf payloads are stored as raw bytes. drizzle has no built-in bytea column. */
export const bytea = customType<{ data: Uint8Array; driverData: Uint8Array }>({
  dataType: () => "bytea",
  // postgres.js serialises Buffer as bytea; PGlite accepts any Uint8Array (Buffer is one).
  toDriver: (value) => (Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength)),
  fromDriver: (value) => (value instanceof Uint8Array ? value : new Uint8Array(value as ArrayLike<number>)),
});

/** Header values carried from the outbox row to the NATS message (traceparent, tracestate, ...). */
export type EventHeaders = Record<string, string>;

/**
 * `<schema>.outbox`: one row per event to publish.
 * `seq` gives the publication order; `published_at` is null until the relay has a PubAck.
 */
export function outboxTable(schema: PgSchema) {
  return schema.table(
    "outbox",
    {
      id: uuid("id").primaryKey(),
      seq: bigserial("seq", { mode: "number" }).notNull(),
      aggregateId: text("aggregate_id").notNull(),
      eventType: text("event_type").notNull(),
      subject: text("subject").notNull(),
      payload: bytea("payload").notNull(),
      headers: jsonb("headers").$type<EventHeaders>().notNull().default({}),
      createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
      publishedAt: timestamp("published_at", { withTimezone: true, mode: "date" }),
    },
    (t) => [
      // The relay only ever reads the unpublished tail in seq order: keep that index tiny.
      index("outbox_unpublished_seq_idx").on(t.seq).where(sql`${t.publishedAt} is null`),
    ],
  );
}

/**
 * `<schema>.inbox`: one row per (consumer, event id) already handled. Written in the
 * same transaction as the handler's own writes, so a redelivered event finds its row
 * and changes nothing.
 */
export function inboxTable(schema: PgSchema) {
  return schema.table(
    "inbox",
    {
      consumer: text("consumer").notNull(),
      // text, not uuid: the id comes from a message header and a consumer must be able
      // to record (and dedupe) events from publishers that are not our outbox.
      eventId: text("event_id").notNull(),
      eventType: text("event_type").notNull(),
      processedAt: timestamp("processed_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    },
    (t) => [primaryKey({ columns: [t.consumer, t.eventId] })],
  );
}

export type OutboxTable = ReturnType<typeof outboxTable>;
export type InboxTable = ReturnType<typeof inboxTable>;
