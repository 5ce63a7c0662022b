// Writing events into the outbox, inside the caller's transaction.
import { randomUUID } from "node:crypto";
import { injectTraceparent } from "../telemetry/trace-context.js";
import { toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { sql, type SQL } from "drizzle-orm";
import { getTableConfig } from "drizzle-orm/pg-core";
import { deferNotify } from "./commit-signal.js";
import type { EventsDb, EventsTx } from "./db.js";
import { deleteInBatches, PRUNE_BATCH } from "./prune.js";
import { TRACEPARENT } from "./headers.js";
import { eventSubject, outboxChannel } from "./naming.js";
import type { EventHeaders, OutboxTable } from "./tables.js";

export interface EnqueueOptions {
  /** The entity the event is about; events of one aggregate are published in the order written. */
  aggregateId: string;
  /** Defaults to a fresh UUID. Pass one to make a retried command produce the same event id. */
  eventId?: string;
  /** Defaults to the active OpenTelemetry context's traceparent, if telemetry registered a propagator. */
  traceparent?: string;
  /** Extra headers to carry to the NATS message. */
  headers?: EventHeaders;
  /** Subject prefix (NATS_SUBJECT_PREFIX); the subject is `${prefix}${fullTypeName}`. */
  prefix?: string;
}

export { outboxChannel };

// Asked on every enqueue and relay wake-up; drizzle's getTableConfig rebuilds the table's
// whole config (every column, index and constraint) per call, ~1 % of a consumer's CPU.
const schemaNames = new WeakMap<OutboxTable, string>();

export function outboxSchemaName(outbox: OutboxTable): string {
  let schema = schemaNames.get(outbox);
  if (schema !== undefined) return schema;
  schema = getTableConfig(outbox).schema;
  if (!schema) throw new Error("the outbox table must live in a pgSchema (use outboxTable(pgSchema('<context>')))");
  schemaNames.set(outbox, schema);
  return schema;
}

/**
 * Writes `message` as an outbox row inside `tx`, so the state change and its event commit
 * (or roll back) together, and makes sure the relay wakes once it commits: through
 * transactionWithEvents when `tx` came from it (fast), else by a NOTIFY inside `tx`
 * (transactional: heard at commit, never on rollback). Returns the event id.
 */
export async function enqueueEvent<Desc extends DescMessage>(
  tx: EventsTx,
  outbox: OutboxTable,
  schema: Desc,
  message: MessageShape<Desc>,
  opts: EnqueueOptions,
): Promise<string> {
  const row = outboxRow("enqueueEvent", schema, message, opts);
  await tx.insert(outbox).values(row);
  await eventsEnqueued(tx, outbox);
  return row.id;
}

/** The outbox row of one event: what enqueueEvent inserts and outboxInsertSql (outboxInsertManySql) selects. */
function outboxRow<Desc extends DescMessage>(caller: string, schema: Desc, message: MessageShape<Desc>, opts: EnqueueOptions) {
  if (!opts.aggregateId) throw new Error(`${caller}: aggregateId is required`);
  const headers: EventHeaders = { ...currentTraceHeaders(), ...opts.headers };
  if (opts.traceparent) headers[TRACEPARENT] = opts.traceparent;
  return {
    id: opts.eventId ?? randomUUID(),
    aggregateId: opts.aggregateId,
    eventType: schema.typeName,
    subject: eventSubject(schema.typeName, opts.prefix ?? ""),
    payload: toBinary(schema, message),
    headers,
  };
}

/**
 * The outbox INSERT of one event as SQL, for a statement that writes a state change and
 * its event together (`with r as (update ... returning ...), e as (<this>) select ...`),
 * which saves the event its own round trip. One row per row of `from` (a CTE of zero or
 * one row: no change, no event), with the columns and headers enqueueEvent writes. Inside
 * a transaction, call eventsEnqueued(tx, outbox) too, as enqueueEvent does.
 */
export function outboxInsertSql<Desc extends DescMessage>(
  outbox: OutboxTable,
  schema: Desc,
  message: MessageShape<Desc>,
  opts: EnqueueOptions,
  from: SQL,
): SQL {
  const row = outboxRow("outboxInsertSql", schema, message, opts);
  const payload = Buffer.from(row.payload.buffer, row.payload.byteOffset, row.payload.byteLength);
  return sql`insert into ${outbox} (id, aggregate_id, event_type, subject, payload, headers)
    select ${row.id}::uuid, ${row.aggregateId}, ${row.eventType}, ${row.subject},
      ${payload}::bytea, ${JSON.stringify(row.headers)}::jsonb from ${from}`;
}

/** One event for outboxInsertManySql: its message and enqueue options. */
export function outboxEvent<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
  opts: EnqueueOptions,
): ReturnType<typeof outboxRow> {
  return outboxRow("outboxEvent", schema, message, opts);
}

/**
 * The outbox INSERT of several events (outboxEvent each) as SQL, for a statement that
 * writes state changes and their events together, as outboxInsertSql does for one. One
 * statement text for any number of events: the rows travel as one jsonb parameter (payloads
 * base64), not as `values (...), (...)` per event, because statements are prepared per text
 * and connection (mesh/db-prepared.ts) and each batch size would be a text planned anew.
 * The rows are inserted in the order given (jsonb_to_recordset keeps array order), so seq
 * follows it. Inside a transaction, call eventsEnqueued(tx, outbox) too.
 */
export function outboxInsertManySql(outbox: OutboxTable, events: ReturnType<typeof outboxRow>[]): SQL {
  const rows = events.map((e) => ({
    id: e.id,
    aggregate_id: e.aggregateId,
    event_type: e.eventType,
    subject: e.subject,
    payload: Buffer.from(e.payload.buffer, e.payload.byteOffset, e.payload.byteLength).toString("base64"),
    headers: e.headers,
  }));
  return sql`insert into ${outbox} (id, aggregate_id, event_type, subject, payload, headers)
    select x.id, x.aggregate_id, x.event_type, x.subject, decode(x.payload, 'base64'), x.headers
    from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb)
      as x(id uuid, aggregate_id text, event_type text, subject text, payload text, headers jsonb)`;
}

/** Makes sure the relay wakes once `tx` commits the outbox rows it wrote (enqueueEvent's last step). */
export async function eventsEnqueued(tx: EventsTx, outbox: OutboxTable): Promise<void> {
  const schemaName = outboxSchemaName(outbox);
  if (!deferNotify(tx, schemaName)) {
    // Not in transactionWithEvents: notify inside the transaction (heard at commit, never
    // on rollback). Postgres folds identical notifications of one transaction into one.
    await tx.execute(sql`select pg_notify(${outboxChannel(schemaName)}, '')`);
  }
}

/** traceparent/tracestate of the active OpenTelemetry context (empty when none is set up). */
function currentTraceHeaders(): EventHeaders {
  // traceparent/tracestate, and x-request-id so consumers' log lines name the request.
  return injectTraceparent<EventHeaders>({});
}

/**
 * Deletes rows published longer than `olderThanMs` ago (by the database's clock); returns how
 * many went. Every replica's relay prunes, outside the relay lock: in bounded batches that
 * skip each other's rows (prune.ts), so two replicas never wait on or deadlock with each other.
 */
export async function prunePublished(db: EventsDb, outbox: OutboxTable, olderThanMs: number, batchSize = PRUNE_BATCH): Promise<number> {
  return deleteInBatches(db, outbox, sql`published_at < now() - ${olderThanMs} * interval '1 millisecond'`, batchSize);
}
