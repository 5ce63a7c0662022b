/** The notification context's SQL, through drizzle: one method per question the service asks. */
import { randomUUID } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { and, desc, eq, lt, sql } from 'drizzle-orm';
import type { Database } from '../../mesh/db.js';
import { resultRows } from '../../mesh/db.js';
import type { EventsTx } from '../../mesh/events/db.js';
import { eventsEnqueued, outboxEvent } from '../../mesh/events/outbox.js';
import { NotificationSentSchema } from '../../gen/shop/notification/v1/notification_pb.js';
import { kindToProto, type KindName, type MessageText } from './domain.js';
import { notifications, outbox, type NotificationRow } from './schema.js';

/**
 * The LISTEN/NOTIFY channel that announces a recorded notification (payload:
 * {"id","userId"}). NOTIFY inside the recording transaction is delivered only
 * after it commits, to every listening connection: every replica's feed.
 */
export const RECORDED_CHANNEL = 'pm_notification_recorded';

export interface RecordedAnnouncement {
  id: string;
  userId: string;
}

export interface NewNotification extends MessageText {
  userId: string;
  kind: KindName;
  orderId: string;
  /** The event that caused it. */
  sourceEventId: string;
}

/**
 * Records a notification, its NotificationSent outbox row and the announcement for live
 * watchers, all inside the consumer's transaction and in one statement (the event and the
 * NOTIFY are written only when the insert wrote a row): recordNotifications with one.
 * Returns undefined when this event already produced a notification (nothing else is written).
 */
export async function recordNotification(
  tx: EventsTx,
  n: NewNotification,
  subjectPrefix: string,
): Promise<NotificationRow | undefined> {
  const [recorded] = await recordNotifications(tx, [prepareNotification(n, subjectPrefix)]);
  return recorded;
}

/**
 * A notification ready to record: its id, time and NotificationSent event made.
 * Make it where the event that caused it is handled (BatchEvent.inTrace): the
 * NotificationSent carries the active trace on, as recordNotification's does.
 */
export interface PreparedNotification {
  id: string;
  createTime: Date;
  n: NewNotification;
  sent: ReturnType<typeof outboxEvent>;
}

export function prepareNotification(n: NewNotification, subjectPrefix: string): PreparedNotification {
  const id = randomUUID();
  const createTime = new Date();
  const sent = outboxEvent(
    NotificationSentSchema,
    create(NotificationSentSchema, {
      notificationId: id,
      userId: n.userId,
      kind: kindToProto(n.kind),
      orderId: n.orderId,
      occurTime: timestampFromDate(createTime),
    }),
    { aggregateId: n.userId, prefix: subjectPrefix },
  );
  return { id, createTime, n, sent };
}

/**
 * recordNotification for many at once, in ONE statement whatever their number: the
 * notifications, their NotificationSent outbox rows and the announcements, each written
 * only for a notification whose insert wrote a row (its source event had none yet), in
 * the order given (seq, outbox seq and NOTIFYs). The rows travel as one jsonb parameter,
 * so every batch size is the same statement text (prepared once per connection:
 * mesh/db-prepared.ts). Returns the notifications recorded.
 */
export async function recordNotifications(tx: EventsTx, batch: PreparedNotification[]): Promise<NotificationRow[]> {
  if (batch.length === 0) return [];
  const rows = batch.map(({ id, createTime, n, sent }, i) => ({
    i,
    id,
    user_id: n.userId,
    kind: n.kind,
    title: n.title,
    body: n.body,
    order_id: n.orderId,
    source_event_id: n.sourceEventId,
    create_time: createTime.toISOString(),
    event_id: sent.id,
    aggregate_id: sent.aggregateId,
    event_type: sent.eventType,
    subject: sent.subject,
    payload: Buffer.from(sent.payload.buffer, sent.payload.byteOffset, sent.payload.byteLength).toString('base64'),
    headers: sent.headers,
    announcement: JSON.stringify({ id, userId: n.userId } satisfies RecordedAnnouncement),
  }));
  // pg_notify is volatile, so Postgres calls it after the sort: in the order given.
  const recorded = resultRows<{ id: string; seq: string | number | bigint }>(
    await tx.execute(sql`
      with x as (
        select * from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as x(i int, id uuid, user_id text, kind text, title text,
          body text, order_id text, source_event_id text, create_time timestamptz, event_id uuid, aggregate_id text,
          event_type text, subject text, payload text, headers jsonb, announcement text)),
      n as (
        insert into "notification"."notifications" (id, user_id, kind, title, body, order_id, source_event_id, create_time)
        select id, user_id, kind, title, body, order_id, source_event_id, create_time from x order by i
        on conflict (source_event_id) do nothing
        returning id, seq),
      e as (
        insert into ${outbox} (id, aggregate_id, event_type, subject, payload, headers)
        select x.event_id, x.aggregate_id, x.event_type, x.subject, decode(x.payload, 'base64'), x.headers
        from x join n using (id) order by x.i)
      select n.id, n.seq, pg_notify(${RECORDED_CHANNEL}, x.announcement) from x join n using (id) order by x.i`),
  );
  if (recorded.length === 0) return [];
  await eventsEnqueued(tx, outbox);
  const seqs = new Map(recorded.map((r) => [r.id, BigInt(r.seq)]));
  return batch.filter((p) => seqs.has(p.id)).map(({ id, createTime, n }) => ({ id, seq: seqs.get(id)!, ...n, createTime }));
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class NotificationRepository {
  constructor(private readonly db: Database) {}

  /**
   * One page of a user's notifications, newest first, strictly older than
   * `beforeSeq` when given (keyset: stable while new ones arrive). Reads one
   * row more than asked to know whether another page follows.
   */
  async list(userId: string, pageSize: number, beforeSeq?: bigint): Promise<{ rows: NotificationRow[]; more: boolean }> {
    const rows = await this.db
      .select()
      .from(notifications)
      .where(and(eq(notifications.userId, userId), beforeSeq === undefined ? undefined : lt(notifications.seq, beforeSeq)))
      .orderBy(desc(notifications.seq))
      .limit(pageSize + 1);
    const more = rows.length > pageSize;
    return { rows: more ? rows.slice(0, pageSize) : rows, more };
  }

  async findById(id: string): Promise<NotificationRow | undefined> {
    if (!UUID.test(id)) return undefined;
    const [row] = await this.db.select().from(notifications).where(eq(notifications.id, id));
    return row;
  }
}
