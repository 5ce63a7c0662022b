/**
 * The saga survives a crash at any step. The order service is started with
 * SAGA_CRASH_AFTER=<step>, which makes it SIGKILL itself right after that
 * step's transition is stored (possibly before PlaceOrder's answer has left,
 * in which case the client retries with the same idempotency key, as a real
 * client would). It is then started again without the hook, and every saga
 * must finish: confirmed once, charged once, stock taken once, points
 * awarded once; a declined one cancelled with its stock back.
 *
 * Several orders are placed at once, so other sagas are caught mid-step by
 * the kill too: they resume when their lease (3 s here) runs out.
 */
import test, { type ExecutionContext } from 'ava';
import { randomUUID } from 'node:crypto';
import { OrderStatus, type Order } from '../gen/shop/order/v1/order_pb.js';
import { PaymentStatus } from '../gen/shop/payment/v1/payment_pb.js';
import { available, eventually, newShopper, seededSkus, setStock, sleep, startShop, watchToEnd, type Shop, type Shopper } from './saga-support.js';

let shop: Shop;
let skus: { sku: string; price: bigint }[];

test.before(async () => {
  shop = await startShop();
  skus = await seededSkus(shop, 6);
});

test.after.always(async () => {
  await shop?.close();
});

/** Resolves when the order process has exited (it kills itself). */
async function orderExited(timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (orderDown()) return;
    if (Date.now() > until) throw new Error('the order service did not crash as asked');
    await sleep(50);
  }
}

function orderDown(): boolean {
  const p = shop.stack.running.get('order')?.process;
  return !p || p.exitCode !== null || p.signalCode !== null;
}

/**
 * PlaceOrder, retried with the same key (safe: it is idempotent) until it
 * answers, or until the service has died: then it is asked again after the
 * restart. Retrying also covers a client channel still backing off from the
 * previous restart.
 */
async function placeRetrying(req: Parameters<Shop['order']['placeOrder']>[0], who: Shopper): Promise<Order | undefined> {
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    try {
      return (await shop.order.placeOrder(req, { ...who.as, timeoutMs: 5000 })).order;
    } catch {
      if (orderDown()) return undefined;
      await sleep(200);
    }
  }
  throw new Error('PlaceOrder never answered');
}

async function crashAndRecover(t: ExecutionContext, step: 'reserve' | 'authorize' | 'confirm', skuIndex: number, token = 'tok_visa') {
  const { sku, price } = skus[skuIndex]!;
  await setStock(shop, sku, 30);
  const me = await newShopper(shop);
  await shop.stack.kill('order');
  await shop.stack.start('order', { SAGA_CRASH_AFTER: step });

  const reqs = Array.from({ length: 3 }, () => ({ idempotencyKey: `k-${randomUUID()}`, lines: [{ sku, quantity: 2n }], paymentToken: token }));
  const first = await Promise.all(reqs.map((r) => placeRetrying(r, me)));
  await orderExited();
  await shop.stack.start('order');
  const orders: Order[] = [];
  for (const [i, r] of reqs.entries()) orders.push(first[i] ?? (await placeRetrying(r, me))!);
  t.is(new Set(orders.map((o) => o.id)).size, 3);

  const ends = await Promise.all(orders.map((o) => watchToEnd(shop, o.id, me, 40_000)));
  // Repeating a request after the crash still answers the first order.
  t.is((await shop.order.placeOrder(reqs[0]!, me.as)).order!.id, orders[0]!.id);
  t.is((await shop.order.listOrders({}, me.as)).orders.length, 3);

  if (token === 'tok_declined') {
    for (const end of ends) {
      t.is(end.status, OrderStatus.CANCELLED);
      t.is(end.cancelReason, 'payment declined');
    }
    t.is(await available(shop, sku), 30n, 'no stock leaked');
    return;
  }
  for (const end of ends) t.is(end.status, OrderStatus.CONFIRMED);
  t.is(await available(shop, sku), 30n - 6n, 'stock taken exactly once per order');
  for (const o of orders) {
    const p = (await shop.payment.getPayment({ orderId: o.id }, me.as)).payment!;
    t.is(p.status, PaymentStatus.CAPTURED);
    t.is(p.amount!.amountMinor, price * 2n);
  }
  const points = await eventually(() => shop.user.getPoints({}, me.as), (p) => p.awards.length >= 3, 30_000, 'points for 3 orders');
  t.is(points.awards.length, 3, 'points awarded once per order');
  t.is(points.balance, 3n * ((price * 2n) / 100n));
}

test.serial('SIGKILL right after reserve, restart: every saga completes once', async (t) => {
  await crashAndRecover(t, 'reserve', 0);
});

test.serial('SIGKILL right after authorize, restart: every saga completes once', async (t) => {
  await crashAndRecover(t, 'authorize', 1);
});

test.serial('SIGKILL right after confirm, restart: confirmed orders stay confirmed and their events still go out', async (t) => {
  await crashAndRecover(t, 'confirm', 2);
});

test.serial('SIGKILL as compensation begins (declined card), restart: cancelled with the stock back', async (t) => {
  await crashAndRecover(t, 'authorize', 3, 'tok_declined');
});
