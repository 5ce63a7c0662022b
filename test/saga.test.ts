/**
 * The order saga end to end: the six real services as child processes on a
 * fresh Postgres database and a NATS prefix of this run, called over gRPC.
 *
 * Out of stock: the order is accepted (PENDING) and the saga cancels it with
 * "out of stock"; PlaceOrder does not check stock (it would be a race anyway:
 * only the reservation decides).
 */
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { Code, ConnectError } from '@connectrpc/connect';
import { NotificationKind } from '../gen/shop/notification/v1/notification_pb.js';
import { OrderStatus } from '../gen/shop/order/v1/order_pb.js';
import { PaymentStatus } from '../gen/shop/payment/v1/payment_pb.js';
import { available, eventually, newShopper, seededSkus, setStock, startShop, watchToEnd, type Shop } from './saga-support.js';

let shop: Shop;
let skus: { sku: string; price: bigint }[];

test.before(async () => {
  shop = await startShop();
  skus = await seededSkus(shop, 8);
});

test.after.always(async () => {
  await shop?.close();
});

test('happy path: register, log in, place, watch to CONFIRMED; charged once, points awarded once, a notification recorded', async (t) => {
  const [{ sku, price }] = [skus[0]!];
  await setStock(shop, sku, 50);
  const me = await newShopper(shop);
  const { order } = await shop.order.placeOrder({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 2n }], paymentToken: 'tok_visa' }, me.as);
  t.is(order!.status, OrderStatus.PENDING);
  t.is(order!.total!.amountMinor, price * 2n);

  const seen: OrderStatus[] = [];
  for await (const msg of shop.order.watchOrder({ id: order!.id }, { ...me.as, timeoutMs: 30_000 })) seen.push(msg.order!.status);
  t.deepEqual(seen.at(-1), OrderStatus.CONFIRMED);
  t.is(seen[0], seen.length > 1 ? OrderStatus.PENDING : OrderStatus.CONFIRMED);

  const payment = (await shop.payment.getPayment({ orderId: order!.id }, me.as)).payment!;
  t.is(payment.status, PaymentStatus.CAPTURED);
  t.is(payment.amount!.amountMinor, price * 2n);
  t.is(await available(shop, sku), 48n);

  const points = await eventually(() => shop.user.getPoints({}, me.as), (p) => p.awards.length > 0, 20_000, 'points');
  t.is(points.awards.length, 1);
  t.is(points.awards[0]!.orderId, order!.id);
  t.is(points.balance, (price * 2n) / 100n);
  const notes = await eventually(
    () => shop.notification.listNotifications({}, me.as),
    (r) => r.notifications.some((n) => n.orderId === order!.id && n.kind === NotificationKind.ORDER_CONFIRMED),
    20_000,
    'notification',
  );
  t.is(notes.notifications.filter((n) => n.orderId === order!.id && n.kind === NotificationKind.ORDER_CONFIRMED).length, 1);
  // Still once a moment later (no redelivery adds a second award).
  await new Promise((r) => setTimeout(r, 1000));
  t.is((await shop.user.getPoints({}, me.as)).awards.length, 1);
});

test('declined payment: CANCELLED "payment declined", stock back where it was, a notification recorded', async (t) => {
  const { sku } = skus[1]!;
  await setStock(shop, sku, 10);
  const before = await available(shop, sku);
  const me = await newShopper(shop);
  const { order } = await shop.order.placeOrder({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 3n }], paymentToken: 'tok_declined' }, me.as);
  const end = await watchToEnd(shop, order!.id, me);
  t.is(end.status, OrderStatus.CANCELLED);
  t.is(end.cancelReason, 'payment declined');
  t.is(await available(shop, sku), before);
  const payment = (await shop.payment.getPayment({ orderId: order!.id }, me.as)).payment!;
  t.is(payment.status, PaymentStatus.DECLINED);
  await eventually(
    () => shop.notification.listNotifications({}, me.as),
    (r) => r.notifications.some((n) => n.orderId === order!.id),
    20_000,
    'a notification about the cancelled order',
  );
  t.is((await shop.user.getPoints({}, me.as)).awards.length, 0);
});

test('out of stock: the order is accepted, then CANCELLED "out of stock"; nothing charged, nothing held', async (t) => {
  const { sku } = skus[2]!;
  await setStock(shop, sku, 1);
  const me = await newShopper(shop);
  const { order } = await shop.order.placeOrder({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 2n }], paymentToken: 'tok_visa' }, me.as);
  t.is(order!.status, OrderStatus.PENDING);
  const end = await watchToEnd(shop, order!.id, me);
  t.is(end.status, OrderStatus.CANCELLED);
  t.is(end.cancelReason, 'out of stock');
  t.is(await available(shop, sku), 1n);
  const payment = await shop.payment.getPayment({ orderId: order!.id }, me.as).then(
    (r) => r.payment,
    () => undefined,
  );
  t.not(payment?.status, PaymentStatus.CAPTURED);
  t.not(payment?.status, PaymentStatus.AUTHORIZED);
});

test('idempotent PlaceOrder: the same key twice, and ten at once, make one order charged once', async (t) => {
  const { sku } = skus[3]!;
  await setStock(shop, sku, 100);
  const me = await newShopper(shop);
  const req = { idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 1n }], paymentToken: 'tok_visa' };
  const results = await Promise.all(Array.from({ length: 10 }, () => shop.order.placeOrder(req, me.as)));
  const ids = new Set(results.map((r) => r.order!.id));
  t.is(ids.size, 1);
  const [id] = [...ids];
  await watchToEnd(shop, id!, me);
  const again = await shop.order.placeOrder(req, me.as);
  t.is(again.order!.id, id);
  t.is(again.order!.status, OrderStatus.CONFIRMED);
  t.is((await shop.order.listOrders({}, me.as)).orders.length, 1);
  t.is(await available(shop, sku), 99n);
  const points = await eventually(() => shop.user.getPoints({}, me.as), (p) => p.awards.length > 0, 20_000, 'points');
  t.is(points.awards.length, 1);
});

test('CancelOrder while payment is slow compensates: stock back, nothing charged; a confirmed order cannot be cancelled', async (t) => {
  const { sku } = skus[4]!;
  await setStock(shop, sku, 20);
  const me = await newShopper(shop);
  const { order } = await shop.order.placeOrder({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 4n }], paymentToken: 'tok_slow' }, me.as);
  await eventually(() => available(shop, sku), (a) => a === 16n, 10_000, 'the reservation');
  const { order: cancelled } = await shop.order.cancelOrder({ id: order!.id, reason: 'changed my mind' }, me.as);
  t.is(cancelled!.status, OrderStatus.CANCELLED);
  t.is(cancelled!.cancelReason, 'changed my mind');
  t.is(await available(shop, sku), 20n);
  // The slow authorization lands after the void/tombstone: never captured.
  await new Promise((r) => setTimeout(r, 3500));
  const payment = await shop.payment.getPayment({ orderId: order!.id }, me.as).then((r) => r.payment, () => undefined);
  t.not(payment?.status, PaymentStatus.CAPTURED);
  t.not(payment?.status, PaymentStatus.AUTHORIZED);
  t.is(await available(shop, sku), 20n);

  const { order: ok } = await shop.order.placeOrder({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 1n }], paymentToken: 'tok_visa' }, me.as);
  await watchToEnd(shop, ok!.id, me);
  const err = await shop.order.cancelOrder({ id: ok!.id }, me.as).then(
    () => undefined,
    (e) => ConnectError.from(e),
  );
  t.is(err?.code, Code.FailedPrecondition);
});

test("orders are private: another shopper's order is NOT_FOUND and not listed", async (t) => {
  const { sku } = skus[5]!;
  await setStock(shop, sku, 10);
  const me = await newShopper(shop);
  const other = await newShopper(shop);
  const { order } = await shop.order.placeOrder({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 1n }], paymentToken: 'tok_visa' }, me.as);
  const err = await shop.order.getOrder({ id: order!.id }, other.as).then(
    () => undefined,
    (e) => ConnectError.from(e),
  );
  t.is(err?.code, Code.NotFound);
  t.is((await shop.order.listOrders({}, other.as)).orders.length, 0);
  t.is((await shop.order.listOrders({}, me.as)).orders[0]!.id, order!.id);
});
