/**
 * A NATS restart in the middle of a burst of orders loses no event. The shop
 * runs against a nats-server of its own (a child process with JetStream and a
 * store in a temp directory: the shared server cannot be restarted by a
 * test). While orders are being placed, the server is SIGKILLed and started
 * again on the same port and store. Every order must still be confirmed, and
 * every OrderConfirmed must reach its consumers exactly once: one points
 * award and one notification per order.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { connect } from 'nats';
import { NotificationKind } from '../gen/shop/notification/v1/notification_pb.js';
import { OrderStatus, type Order } from '../gen/shop/order/v1/order_pb.js';
import { freePort } from '../mesh/testing/index.js';
import { eventually, newShopper, seededSkus, setStock, sleep, startShop, watchToEnd, type Shop, type Shopper } from './saga-support.js';

let shop: Shop | undefined;
let nats: ChildProcess | undefined;
let storeDir: string;
let natsPort: number;

async function startNats(): Promise<ChildProcess> {
  const child = spawn('nats-server', ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', storeDir], { stdio: 'ignore' });
  const until = Date.now() + 10_000;
  for (;;) {
    try {
      const nc = await connect({ servers: `nats://127.0.0.1:${natsPort}`, reconnect: false, timeout: 500 });
      await (await nc.jetstreamManager()).getAccountInfo();
      await nc.close();
      return child;
    } catch {
      if (child.exitCode !== null || Date.now() > until) throw new Error('nats-server did not start');
      await sleep(100);
    }
  }
}

async function stopNats(signal: NodeJS.Signals): Promise<void> {
  const child = nats;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill(signal);
  });
}

test.before(async () => {
  storeDir = mkdtempSync(path.join(os.tmpdir(), 'protomesh-nats-'));
  natsPort = await freePort();
  nats = await startNats();
  shop = await startShop({ natsUrl: `nats://127.0.0.1:${natsPort}` });
});

test.after.always(async () => {
  await shop?.close().catch(() => {});
  await stopNats('SIGTERM');
  rmSync(storeDir, { recursive: true, force: true });
});

test('NATS SIGKILLed and restarted during a burst: every order confirmed, every event consumed once', async (t) => {
  const s = shop!;
  const skus = await seededSkus(s, 4);
  for (const { sku } of skus) await setStock(s, sku, 1000);
  const shoppers: Shopper[] = [];
  for (let i = 0; i < 4; i++) shoppers.push(await newShopper(s));

  const placed: { order: Order; who: Shopper }[] = [];
  const burst = (async () => {
    for (let wave = 0; wave < 10; wave++) {
      const results = await Promise.all(
        shoppers.map(async (who, i) => {
          const { order } = await s.order.placeOrder(
            { idempotencyKey: `k-${randomUUID()}`, lines: [{ sku: skus[i]!.sku, quantity: 1n }], paymentToken: 'tok_visa' },
            who.as,
          );
          return { order: order!, who };
        }),
      );
      placed.push(...results);
      await sleep(100);
    }
  })();
  await sleep(300);
  await stopNats('SIGKILL');
  await sleep(1500);
  nats = await startNats();
  await burst;

  t.is(placed.length, 40);
  const ends = await Promise.all(placed.map((p) => watchToEnd(s, p.order.id, p.who, 60_000)));
  t.true(ends.every((o) => o.status === OrderStatus.CONFIRMED), 'every order confirmed');

  for (const who of shoppers) {
    const mine = new Set(placed.filter((p) => p.who === who).map((p) => p.order.id));
    const points = await eventually(() => s.user.getPoints({}, who.as), (p) => p.awards.length >= mine.size, 60_000, 'points');
    t.is(points.awards.length, mine.size, 'one award per order');
    t.deepEqual(points.awards.map((a) => a.orderId).sort(), [...mine].sort());
    const notes = await eventually(
      () => s.notification.listNotifications({ pageSize: 100 }, who.as),
      (r) => r.notifications.filter((n) => n.kind === NotificationKind.ORDER_CONFIRMED).length >= mine.size,
      60_000,
      'notifications',
    );
    const confirmed = notes.notifications.filter((n) => n.kind === NotificationKind.ORDER_CONFIRMED);
    t.is(confirmed.length, mine.size, 'one notification per order');
    t.deepEqual(confirmed.map((n) => n.orderId).sort(), [...mine].sort());
  }
});
