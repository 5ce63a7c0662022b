/**
 * Embedded mode: with DATABASE_URL unset the service runs on PGlite, and
 * WatchNotifications still hears recorded notifications (PGlite's LISTEN).
 */
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { NotificationService } from '../../gen/shop/notification/v1/notification_pb.js';
import { createMeshClient } from '../../mesh/client.js';
import { identityHeaders } from '../../mesh/identity.js';
import { startServiceForTest, type ServiceUnderTest } from '../../mesh/testing/index.js';
import { notificationSettings, startNotification, type NotificationApp } from './main.js';
import { recordNotification } from './repository.js';

let svc: ServiceUnderTest<NotificationApp> | undefined;
test.after.always(() => svc?.close());

test('on PGlite, a watcher receives a notification recorded after it started', async (t) => {
  svc = await startServiceForTest(notificationSettings, (config) => startNotification(config, '127.0.0.1'), {}, { pglite: true });
  const { app, nats } = svc;
  t.is(app.database.driver, 'pglite');
  const client = createMeshClient(NotificationService, app.server.address, { retry: { maxAttempts: 1 } });
  const me = randomUUID();
  const abort = new AbortController();
  const stream = client
    .watchNotifications({}, { headers: identityHeaders({ userId: me, role: 'user' }), signal: abort.signal, timeoutMs: 60_000 })
    [Symbol.asyncIterator]();
  const first = stream.next();
  while (app.feed.watcherCount(me) === 0) await new Promise((r) => setTimeout(r, 20));

  const orderId = randomUUID();
  const db = app.database.db;
  await db.transaction((tx) =>
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
