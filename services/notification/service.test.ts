/**
 * The notification service over real gRPC (grpc-js over TCP), on a fresh
 * Postgres database and real NATS JetStream with a unique subject prefix.
 */
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { create, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import type { NatsConnection } from 'nats';
import { asc, count, eq } from 'drizzle-orm';
import { NotificationSentSchema } from '../../gen/shop/notification/v1/notification_pb.js';
import { fromBinary } from '@bufbuild/protobuf';
import type { BatchEvent, EventMeta } from '../../mesh/events/consumer.js';
import { listenFromDb } from '../../mesh/events/listen.js';
import { NotificationKind, NotificationService } from '../../gen/shop/notification/v1/notification_pb.js';
import { OrderCancelledSchema, OrderConfirmedSchema } from '../../gen/shop/order/v1/order_pb.js';
import { PaymentFailedSchema } from '../../gen/shop/payment/v1/payment_pb.js';
import { createMeshClient } from '../../mesh/client.js';
import { fieldViolations } from '../../mesh/errors.js';
import { publishRawEvent } from '../../mesh/events/publisher.js';
import { identityHeaders } from '../../mesh/identity.js';
import { startServiceForTest, statementsOfTransaction, type ServiceUnderTest, type TestNatsPrefix } from '../../mesh/testing/index.js';
import { encodePageToken } from './domain.js';
import { notificationSettings, startNotification, type NotificationApp } from './main.js';
import { notificationConsumers, notificationHandlers } from './consumers.js';
import { recordNotification, RECORDED_CHANNEL, type RecordedAnnouncement } from './repository.js';
import { notifications, outbox } from './schema.js';

let svc: ServiceUnderTest<NotificationApp, typeof notificationSettings>;
let app: NotificationApp;
let client: Client<typeof NotificationService>;
let nc: NatsConnection;
let nats: TestNatsPrefix;

test.before(async () => {
  svc = await startServiceForTest(notificationSettings, (config) => startNotification(config, '127.0.0.1'), {
    EVENT_MAX_DELIVER: '3',
  });
  ({ app, nc, nats } = svc);
  client = createMeshClient(NotificationService, app.server.address, { retry: { maxAttempts: 1 } });
});

test.after.always(() => svc?.close());

const as = (userId: string) => ({ headers: identityHeaders({ userId, role: 'user' }) });

async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error('expected the call to fail');
}

async function until<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, limitMs = 15_000): Promise<T> {
  const end = Date.now() + limitMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > end) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Publishes an event the way the relay does; `msgId` differs from the event id to simulate a redelivery. */
async function publish<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>, eventId = randomUUID(), msgId?: string) {
  await publishRawEvent(nc.jetstream(), {
    subject: `${nats.subjectPrefix}${schema.typeName}`,
    payload: toBinary(schema, message),
    eventId,
    eventType: schema.typeName,
    msgId,
  });
  return eventId;
}

async function userRows(userId: string) {
  return app.database.db.select().from(notifications).where(eq(notifications.userId, userId));
}

test('each event records one notification, even when delivered twice, and announces it', async (t) => {
  const userId = randomUUID();
  const orderId = randomUUID();
  const confirmed = create(OrderConfirmedSchema, { orderId, userId, total: { currencyCode: 'EUR', amountMinor: 2599n } });
  const confirmedId = await publish(OrderConfirmedSchema, confirmed);
  await publish(OrderConfirmedSchema, confirmed, confirmedId, `${confirmedId}-redelivered`);
  await publish(OrderCancelledSchema, create(OrderCancelledSchema, { orderId: randomUUID(), userId, reason: 'out of stock' }));
  await publish(PaymentFailedSchema, create(PaymentFailedSchema, { orderId: randomUUID(), userId, reason: 'card declined' }));

  const handled = () => app.consumers.reduce((n, c) => n + c.stats().handled + c.stats().duplicates, 0);
  await until('four deliveries handled', () => handled() >= 4 && userRows(userId).then((r) => r.length >= 3));
  const rows = await userRows(userId);
  t.is(rows.length, 3);
  t.deepEqual(rows.map((r) => r.kind).sort(), ['order_cancelled', 'order_confirmed', 'payment_failed']);
  const confirmedRow = rows.find((r) => r.kind === 'order_confirmed')!;
  t.is(confirmedRow.orderId, orderId);
  t.is(confirmedRow.sourceEventId, confirmedId);
  t.true(confirmedRow.body.includes('EUR 25.99'));

  // One NotificationSent per notification, published by the relay.
  await until('NotificationSent published', async () => {
    const sent = await app.database.db.select().from(outbox).where(eq(outbox.aggregateId, userId));
    return sent.length === 3 && sent.every((o) => o.publishedAt !== null && o.eventType === 'shop.notification.v1.NotificationSent');
  });
  t.pass();
});

test('ListNotifications: only the caller, newest first, keyset pages with an opaque token', async (t) => {
  const me = randomUUID();
  const other = randomUUID();
  const record = (userId: string, i: number) =>
    app.database.db.transaction((tx) =>
      recordNotification(
        tx,
        { userId, kind: 'order_cancelled', orderId: randomUUID(), sourceEventId: randomUUID(), title: `t${i}`, body: `b${i}` },
        nats.subjectPrefix,
      ),
    );
  for (let i = 1; i <= 5; i++) await record(me, i);
  await record(other, 99);

  const page1 = await client.listNotifications({ pageSize: 2 }, as(me));
  t.deepEqual(page1.notifications.map((n) => n.title), ['t5', 't4']);
  t.true(page1.notifications.every((n) => n.userId === me && n.kind === NotificationKind.ORDER_CANCELLED));
  t.not(page1.nextPageToken, '');
  // A notification arriving between pages shifts nothing.
  await record(me, 6);
  const page2 = await client.listNotifications({ pageSize: 2, pageToken: page1.nextPageToken }, as(me));
  t.deepEqual(page2.notifications.map((n) => n.title), ['t3', 't2']);
  const page3 = await client.listNotifications({ pageSize: 2, pageToken: page2.nextPageToken }, as(me));
  t.deepEqual(page3.notifications.map((n) => n.title), ['t1']);
  t.is(page3.nextPageToken, '');

  const all = await client.listNotifications({}, as(me));
  t.deepEqual(all.notifications.map((n) => n.title), ['t6', 't5', 't4', 't3', 't2', 't1']);
  const theirs = await client.listNotifications({}, as(other));
  t.deepEqual(theirs.notifications.map((n) => n.title), ['t99']);
  // A token does not open someone else's notifications: it is only a position.
  const crossed = await client.listNotifications({ pageToken: encodePageToken(1n << 60n) }, as(other));
  t.deepEqual(crossed.notifications.map((n) => n.title), ['t99']);
});

test('ListNotifications and WatchNotifications: bad input names the field; anonymous is UNAUTHENTICATED', async (t) => {
  const me = randomUUID();
  for (const [req, field] of [
    [{ pageSize: -1 }, 'page_size'],
    [{ pageToken: 'not-ours' }, 'page_token'],
    [{ pageToken: Buffer.from('n1:abc').toString('base64url') }, 'page_token'],
  ] as const) {
    const err = await rejection(client.listNotifications(req, as(me)));
    t.is(err.code, Code.InvalidArgument);
    t.is(fieldViolations(err)[0]?.field, field);
  }
  t.is((await rejection(client.listNotifications({}))).code, Code.Unauthenticated);
  const watch = async () => {
    for await (const _ of client.watchNotifications({})) return;
  };
  t.is((await rejection(watch())).code, Code.Unauthenticated);
});

test('WatchNotifications streams a notification recorded after it started, and ends when the client cancels', async (t) => {
  const me = randomUUID();
  const someoneElse = randomUUID();
  const abort = new AbortController();
  const stream = client.watchNotifications({}, { ...as(me), signal: abort.signal, timeoutMs: 60_000 })[Symbol.asyncIterator]();
  const first = stream.next();
  await until('the watcher subscribed', () => app.feed.watcherCount(me) === 1);

  // Someone else's notification is not ours; ours arrives through the whole path (NATS -> consumer -> NOTIFY -> stream).
  await publish(PaymentFailedSchema, create(PaymentFailedSchema, { orderId: randomUUID(), userId: someoneElse, reason: 'x' }));
  const orderId = randomUUID();
  await publish(PaymentFailedSchema, create(PaymentFailedSchema, { orderId, userId: me, reason: 'insufficient funds' }));

  const got = await first;
  t.false(got.done);
  const n = got.value!.notification!;
  t.is(n.userId, me);
  t.is(n.orderId, orderId);
  t.is(n.kind, NotificationKind.PAYMENT_FAILED);
  t.is(n.title, 'Payment declined');
  t.true(n.body.includes('insufficient funds'));
  const [row] = await userRows(me);
  t.is(n.id, row!.id);

  abort.abort();
  const err = await rejection(stream.next());
  t.is(err.code, Code.Canceled);
  await until('the server removed the watcher', () => app.feed.watcherCount(me) === 0);
  t.is(app.feed.watcherCount(), 0);
  const [{ n: recorded }] = await app.database.db.select({ n: count() }).from(notifications).where(eq(notifications.userId, me));
  t.is(recorded, 1);
});

// Serial (ava runs serial tests first): the second replica shares the durable consumers and must be
// gone before the other tests count what the first replica's consumers handled.
test.serial('two replicas: a watcher on one hears a notification recorded by the other', async (t) => {
  const replica = await startNotification(svc.config, '127.0.0.1');
  t.teardown(() => replica.close(1000));
  const other = createMeshClient(NotificationService, replica.server.address, { retry: { maxAttempts: 1 } });
  const me = randomUUID();
  const abort = new AbortController();
  const stream = other.watchNotifications({}, { ...as(me), signal: abort.signal, timeoutMs: 60_000 })[Symbol.asyncIterator]();
  const first = stream.next();
  await until('the watcher subscribed on the second replica', () => replica.feed.watcherCount(me) === 1);

  const orderId = randomUUID();
  // Recorded through the first replica's database handle, as its consumer would.
  await app.database.db.transaction((tx) =>
    recordNotification(
      tx,
      { userId: me, kind: 'order_confirmed', orderId, sourceEventId: randomUUID(), title: 'Order confirmed', body: 'b' },
      nats.subjectPrefix,
    ),
  );
  const got = await first;
  t.is(got.value?.notification?.orderId, orderId);
  abort.abort();
  await stream.next().catch(() => undefined);
});

function eventMeta(eventId: string): EventMeta {
  return { eventId, eventType: OrderConfirmedSchema.typeName, subject: '', stream: '', streamSeq: 0, deliveryCount: 1, headers: {}, publishedAt: new Date() };
}

test('the new events of a batch are recorded as one at a time records them, in one statement', async (t) => {
  t.true(notificationConsumers(nats.subjectPrefix).every((c) => typeof c.handleBatch === 'function'), 'every consumer batches');
  const { handler, handleBatch } = notificationHandlers(nats.subjectPrefix).orderConfirmed;
  const announced: RecordedAnnouncement[] = [];
  const unlisten = await listenFromDb(app.database.db)!(RECORDED_CHANNEL, (payload) => announced.push(JSON.parse(payload)));
  t.teardown(() => unlisten());
  const orders = [2599n, 100n, 123456n].map((amountMinor) => ({ orderId: randomUUID(), total: { currencyCode: 'EUR', amountMinor } }));
  const alone = randomUUID();
  const together = randomUUID();
  const eventsFor = (userId: string) => orders.map((o) => ({ event: create(OrderConfirmedSchema, { ...o, userId }), meta: eventMeta(randomUUID()) }));
  // Each user's first event was recorded before (its inbox row since pruned, say): seen again, it records nothing.
  const one = eventsFor(alone);
  const many = eventsFor(together);
  for (const { event, meta } of [one[0]!, many[0]!]) await app.database.db.transaction((tx) => handler(tx, event, meta));

  for (const { event, meta } of one) await app.database.db.transaction((tx) => handler(tx, event, meta));
  const batch: BatchEvent<typeof OrderConfirmedSchema>[] = many.map((e) => ({ ...e, inTrace: (fn) => fn() }));
  const statements = await statementsOfTransaction(app.database.db, (tx) => handleBatch(tx, batch));
  t.is(statements.length, 1, 'one statement for the batch (one per event before)');

  // The same rows, in the same order, whichever way they were recorded.
  const recorded = async (userId: string, events: typeof one) => {
    const rows = await app.database.db.select().from(notifications).where(eq(notifications.userId, userId)).orderBy(asc(notifications.seq));
    const sent = await app.database.db.select().from(outbox).where(eq(outbox.aggregateId, userId)).orderBy(asc(outbox.seq));
    const eventIndex = (id: string) => events.findIndex((e) => e.meta.eventId === id);
    return {
      notifications: rows.map((r) => ({ kind: r.kind, title: r.title, body: r.body, orderId: r.orderId, source: eventIndex(r.sourceEventId) })),
      sent: sent.map((o, i) => {
        const m = fromBinary(NotificationSentSchema, o.payload);
        const row = rows[i]!;
        return {
          eventType: o.eventType,
          subject: o.subject,
          headers: Object.keys(o.headers).sort(),
          ofItsNotification: m.notificationId === row.id && m.userId === userId && m.orderId === row.orderId,
          kind: m.kind,
          occurAtCreate: Number(m.occurTime!.seconds) * 1000 + Math.floor(m.occurTime!.nanos / 1e6) === row.createTime.getTime(),
        };
      }),
      announced: announced.filter((a) => a.userId === userId).map((a) => rows.findIndex((r) => r.id === a.id)),
    };
  };
  await until('every announcement heard', () => announced.length >= 2 * orders.length);
  const expected = await recorded(alone, one);
  t.deepEqual(expected.notifications.map((n) => n.source), [0, 1, 2]);
  t.deepEqual(expected.announced, [0, 1, 2]);
  t.true(expected.sent.every((s) => s.ofItsNotification && s.occurAtCreate));
  t.deepEqual(await recorded(together, many), expected);
});
