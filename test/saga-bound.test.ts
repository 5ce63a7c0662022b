/**
 * The saga's bound (SAGA_FINAL_WITHIN, services/order/domain.ts): with the
 * real services as child processes, a dependency that stays down does not
 * keep an order PENDING. The order goes final within the bound (8 s here,
 * deadline 5 s); what is left to undo or finish runs once the service is back,
 * with no stock leaked and nothing charged twice.
 *
 * Without the bound, both orders below stay PENDING for as long as inventory
 * is down (compensation and confirm retried until they succeed), and
 * watchToEnd times out.
 */
import test from 'ava';
import { randomUUID } from 'node:crypto';
import postgres from 'postgres';
import { OrderStatus } from '../gen/shop/order/v1/order_pb.js';
import { PaymentStatus } from '../gen/shop/payment/v1/payment_pb.js';
import { available, eventually, newShopper, seededSkus, setStock, sleep, startShop, watchToEnd, type Shop } from './saga-support.js';

const DEADLINE_MS = 5_000;
const FINAL_WITHIN_MS = 8_000;
/** Past the bound: one step's calls, a poll, the watch's re-read, a loaded machine. */
const SLACK_MS = 4_000;

let shop: Shop;
let skus: { sku: string; price: bigint }[];
let sql: postgres.Sql;

test.before(async () => {
  shop = await startShop({ orderEnv: { SAGA_DEADLINE: `${DEADLINE_MS}ms`, SAGA_FINAL_WITHIN: `${FINAL_WITHIN_MS}ms` } });
  skus = await seededSkus(shop, 4);
  sql = postgres(shop.db.url, { max: 2, onnotice: () => {} });
});

test.after.always(async () => {
  await sql?.end({ timeout: 5 });
  await shop?.close();
});

const sagaStep = async (orderId: string) => (await sql`select step from "order".sagas where order_id = ${orderId}`)[0]?.step as string;
const orderEvents = async (orderId: string) =>
  (await sql`select event_type from "order".outbox where aggregate_id = ${orderId} order by seq`).map((r) => String(r.event_type).split('.').pop());
/** Inventory is taken away in each test; the after-each brings it back if a test failed with it down. */
let inventoryDown = false;
async function killInventory(): Promise<void> {
  inventoryDown = true;
  await shop.stack.kill('inventory');
}
async function startInventory(): Promise<void> {
  await shop.stack.start('inventory');
  inventoryDown = false;
}
test.afterEach.always(async () => {
  if (inventoryDown) await startInventory();
});

/** A call straight to a restarted service: this test's own channel may still be backing off from the outage. */
async function afterRestart<T>(call: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await call();
    } catch (err) {
      if (i >= 50) throw err;
      await sleep(200);
    }
  }
}

const reservation = async (orderId: string) => (await sql`select status from inventory.reservations where id = ${orderId}`)[0]?.status as string | undefined;

test.serial('inventory down for good during reserve: CANCELLED "timeout" within the bound; once it is back the release lands', async (t) => {
  const { sku } = skus[0]!;
  await setStock(shop, sku, 10);
  const me = await newShopper(shop);
  await killInventory();
  const started = Date.now();
  const { order } = await shop.order.placeOrder({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 2n }], paymentToken: 'tok_visa' }, me.as);
  const end = await watchToEnd(shop, order!.id, me, FINAL_WITHIN_MS + SLACK_MS);
  const took = Date.now() - started;
  t.is(end.status, OrderStatus.CANCELLED);
  t.is(end.cancelReason, 'timeout');
  t.true(took >= DEADLINE_MS, `settled only after the deadline (${took} ms)`);
  t.is(await sagaStep(order!.id), 'compensate', 'the release is still owed while inventory is down');
  await sleep(1_000);
  t.deepEqual(await orderEvents(order!.id), ['OrderPlaced', 'OrderCancelled'], 'one final event');

  await startInventory();
  await eventually(() => sagaStep(order!.id), (s) => s === 'done', 15_000, 'the saga to finish its compensation');
  t.is(await reservation(order!.id), 'RELEASED', 'released (a tombstone): a late ReserveStock is refused, nothing can leak');
  t.is(await afterRestart(() => available(shop, sku)), 10n);
  const payment = await shop.payment.getPayment({ orderId: order!.id }, me.as).then((r) => r.payment, () => undefined);
  t.is(payment, undefined, 'never charged');
  t.deepEqual(await orderEvents(order!.id), ['OrderPlaced', 'OrderCancelled'], 'finishing wrote no second event');
  t.is((await shop.order.getOrder({ id: order!.id }, me.as)).order!.status, OrderStatus.CANCELLED);
});

test.serial('inventory down for good during confirm (captured, commit unanswered): CONFIRMED within the bound; once it is back the commit lands, charged once', async (t) => {
  const { sku, price } = skus[1]!;
  await setStock(shop, sku, 10);
  const me = await newShopper(shop);
  const started = Date.now();
  // tok_slow: authorize takes PAYMENT_SLOW_MS (3 s), time to take inventory away after the reservation.
  const { order } = await shop.order.placeOrder({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 3n }], paymentToken: 'tok_slow' }, me.as);
  await eventually(() => available(shop, sku), (n) => n === 7n, 3_000, 'the reservation');
  await killInventory();
  const end = await watchToEnd(shop, order!.id, me, FINAL_WITHIN_MS + SLACK_MS);
  const took = Date.now() - started;
  t.is(end.status, OrderStatus.CONFIRMED, 'a commit may be out: the saga can only go forward');
  t.true(took <= FINAL_WITHIN_MS + SLACK_MS, `final after ${took} ms`);
  t.is(await sagaStep(order!.id), 'commit', 'the commit is still owed while inventory is down');
  const captured = (await shop.payment.getPayment({ orderId: order!.id }, me.as)).payment!;
  t.is(captured.status, PaymentStatus.CAPTURED);

  await startInventory();
  await eventually(() => sagaStep(order!.id), (s) => s === 'done', 15_000, 'the saga to finish its commit');
  t.is(await reservation(order!.id), 'COMMITTED');
  const stock = (await afterRestart(() => shop.inventory.getStock({ sku }))).stock!;
  t.is(stock.onHand, 7n, 'sold once');
  t.is(stock.reserved, 0n, 'nothing left held');
  const payment = (await shop.payment.getPayment({ orderId: order!.id }, me.as)).payment!;
  t.is(payment.status, PaymentStatus.CAPTURED);
  t.is(payment.amount!.amountMinor, price * 3n, 'charged once, the full amount');
  t.deepEqual(await orderEvents(order!.id), ['OrderPlaced', 'OrderConfirmed'], 'one final event');
});
