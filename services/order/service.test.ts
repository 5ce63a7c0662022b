/**
 * The order service in-process on a real Postgres database and real NATS,
 * against fake catalog, inventory and payment services served by mesh/server
 * (the upstreams are not under test here; test/saga*.test.ts runs the real
 * ones). The fakes keep what they were asked in memory, so the tests can
 * check that every saga ends with nothing held and nothing charged twice.
 */
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { timestampNow } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { connect } from 'nats';
import { sql } from 'drizzle-orm';
import { CatalogService, ProductSchema } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { InventoryService, ReservationSchema, ReservationStatus } from '../../gen/shop/inventory/v1/inventory_pb.js';
import { OrderService, OrderStatus, type Order } from '../../gen/shop/order/v1/order_pb.js';
import { PaymentSchema, PaymentService, PaymentStatus } from '../../gen/shop/payment/v1/payment_pb.js';
import { closeMeshClients, createMeshClient } from '../../mesh/client.js';
import { parseConfig } from '../../mesh/config.js';
import { resultRows } from '../../mesh/db.js';
import { fieldViolations, invalidArguments } from '../../mesh/errors.js';
import { identityHeaders } from '../../mesh/identity.js';
import { serve, startMeshServer, type MeshServer } from '../../mesh/server.js';
import { createTestDatabase, testNatsPrefix, testNatsUrl, type TestDatabase } from '../../mesh/testing/index.js';
import { normalizeSubjectPrefix, streamPrefix } from '../../mesh/events/naming.js';
import { orderSettings, sagaSettingsOf, startOrder, type OrderApp, type OrderConfig } from './main.js';

// ---- fakes --------------------------------------------------------------------------

const products = new Map([
  ['A-1', { name: 'Apple', currency: 'EUR', price: 150n }],
  ['B-2', { name: 'Banana', currency: 'EUR', price: 40n }],
  ['C-3', { name: 'Cherry', currency: 'EUR', price: 7n }],
  ['U-1', { name: 'Dollar thing', currency: 'USD', price: 100n }],
  ['FLAKY-1', { name: 'Flaky', currency: 'EUR', price: 10n }],
  ['RARE-1', { name: 'Rare', currency: 'EUR', price: 9999n }],
]);

/** BatchGetProducts calls that asked for C-3 (only the coalescing test orders it). */
let coalescedCatalogCalls = 0;
const fakeCatalog: Partial<ServiceImpl<typeof CatalogService>> = {
  async batchGetProducts(req) {
    // The catalog refuses REFUSED-1 as it would a malformed SKU: naming the field of the request.
    const refused = req.skus.flatMap((sku, i) => (sku === 'REFUSED-1' ? [{ field: `skus[${i}]`, description: 'refused' }] : []));
    if (refused.length > 0) throw invalidArguments(refused);
    if (req.skus.includes('C-3')) {
      coalescedCatalogCalls++;
      await new Promise((r) => setTimeout(r, 20)); // a call in flight while the others arrive
    }
    return {
      products: req.skus.flatMap((sku) => {
        const p = products.get(sku);
        return p ? [create(ProductSchema, { sku, name: p.name, price: { currencyCode: p.currency, amountMinor: p.price } })] : [];
      }),
      missingSkus: req.skus.filter((s) => !products.has(s)),
    };
  },
};

/** Stock on hand per SKU and the reservations against it, the way inventory promises to behave. */
const stock = new Map<string, bigint>([
  ['A-1', 1000n],
  ['B-2', 1000n],
  ['C-3', 1000n],
  ['FLAKY-1', 1000n],
  ['RARE-1', 2n],
]);
const reservations = new Map<string, { status: ReservationStatus; lines: { sku: string; quantity: bigint }[] }>();
const calls: string[] = [];
/** Reservations holding FLAKY-1 answer UNAVAILABLE this many times first (more than one call's own retries). */
const FLAKY_FAILURES = 5;
const flaky = new Map<string, number>();

function reserved(sku: string): bigint {
  let n = 0n;
  for (const r of reservations.values()) {
    if (r.status === ReservationStatus.RESERVED) for (const l of r.lines) if (l.sku === sku) n += l.quantity;
  }
  return n;
}

const fakeInventory: Partial<ServiceImpl<typeof InventoryService>> = {
  async reserveStock(req) {
    calls.push(`reserve ${req.reservationId}`);
    if (req.lines.some((l) => l.sku === 'FLAKY-1') && (flaky.get(req.reservationId) ?? 0) < FLAKY_FAILURES) {
      flaky.set(req.reservationId, (flaky.get(req.reservationId) ?? 0) + 1);
      throw new ConnectError('inventory restarting', Code.Unavailable);
    }
    const existing = reservations.get(req.reservationId);
    if (existing?.status === ReservationStatus.RELEASED) throw new ConnectError('reservation was released', Code.FailedPrecondition);
    if (!existing) {
      for (const l of req.lines) {
        if ((stock.get(l.sku) ?? 0n) - reserved(l.sku) < l.quantity) throw new ConnectError(`${l.sku}: out of stock`, Code.FailedPrecondition);
      }
      reservations.set(req.reservationId, { status: ReservationStatus.RESERVED, lines: req.lines.map((l) => ({ sku: l.sku, quantity: l.quantity })) });
    }
    const r = reservations.get(req.reservationId)!;
    return { reservation: create(ReservationSchema, { id: req.reservationId, status: r.status }) };
  },
  async releaseReservation(req) {
    calls.push(`release ${req.reservationId}`);
    const r = reservations.get(req.reservationId);
    if (!r) reservations.set(req.reservationId, { status: ReservationStatus.RELEASED, lines: [] });
    else if (r.status === ReservationStatus.RESERVED) r.status = ReservationStatus.RELEASED;
    return { reservation: create(ReservationSchema, { id: req.reservationId, status: reservations.get(req.reservationId)!.status }) };
  },
  async commitReservation(req) {
    calls.push(`commit ${req.reservationId}`);
    const r = reservations.get(req.reservationId);
    if (!r || r.status === ReservationStatus.RELEASED) throw new ConnectError('no open reservation', Code.FailedPrecondition);
    if (r.status === ReservationStatus.RESERVED) {
      r.status = ReservationStatus.COMMITTED;
      for (const l of r.lines) stock.set(l.sku, stock.get(l.sku)! - l.quantity);
    }
    return { reservation: create(ReservationSchema, { id: req.reservationId, status: r.status }) };
  },
};

const payments = new Map<string, { status: PaymentStatus; amount: bigint }>();
/** Authorizations counted per order: a retried call must not charge twice. */
const charges = new Map<string, number>();
let slowMs = 300;

const fakePayment: Partial<ServiceImpl<typeof PaymentService>> = {
  async authorizePayment(req) {
    calls.push(`authorize ${req.orderId}`);
    if (req.cardToken === 'tok_error') throw new ConnectError('processor down', Code.Unavailable);
    if (req.cardToken === 'tok_slow') await new Promise((r) => setTimeout(r, slowMs));
    let p = payments.get(req.orderId);
    if (!p) {
      const status = req.cardToken === 'tok_declined' ? PaymentStatus.DECLINED : PaymentStatus.AUTHORIZED;
      p = { status, amount: req.amount?.amountMinor ?? 0n };
      payments.set(req.orderId, p);
      if (status === PaymentStatus.AUTHORIZED) charges.set(req.orderId, (charges.get(req.orderId) ?? 0) + 1);
    }
    return { payment: create(PaymentSchema, { orderId: req.orderId, status: p.status }) };
  },
  async capturePayment(req) {
    calls.push(`capture ${req.orderId}`);
    const p = payments.get(req.orderId);
    if (!p || (p.status !== PaymentStatus.AUTHORIZED && p.status !== PaymentStatus.CAPTURED)) {
      throw new ConnectError('nothing to capture', Code.FailedPrecondition);
    }
    p.status = PaymentStatus.CAPTURED;
    return { payment: create(PaymentSchema, { orderId: req.orderId, status: p.status }) };
  },
  async refundPayment(req) {
    calls.push(`refund ${req.orderId}`);
    const p = payments.get(req.orderId);
    if (!p) {
      payments.set(req.orderId, { status: PaymentStatus.VOIDED, amount: 0n });
      return {};
    }
    if (p.status === PaymentStatus.AUTHORIZED) p.status = PaymentStatus.VOIDED;
    if (p.status === PaymentStatus.CAPTURED) p.status = PaymentStatus.REFUNDED;
    return { payment: create(PaymentSchema, { orderId: req.orderId, status: p.status, updateTime: timestampNow() }) };
  },
};

// ---- setup --------------------------------------------------------------------------

let testDb: TestDatabase;
let upstreams: MeshServer[] = [];
let app: OrderApp;
let config: OrderConfig;
const nats = testNatsPrefix();
let client: ReturnType<typeof createMeshClient<typeof OrderService>>;

test.before(async () => {
  testDb = await createTestDatabase();
  upstreams = await Promise.all([
    startMeshServer({ name: 'catalog', host: '127.0.0.1', port: 0, services: [serve(CatalogService, fakeCatalog)] }),
    startMeshServer({ name: 'inventory', host: '127.0.0.1', port: 0, services: [serve(InventoryService, fakeInventory)] }),
    startMeshServer({ name: 'payment', host: '127.0.0.1', port: 0, services: [serve(PaymentService, fakePayment)] }),
  ]);
  config = parseConfig(orderSettings, {
    DATABASE_URL: testDb.url,
    NATS_URL: testNatsUrl(),
    NATS_SUBJECT_PREFIX: nats.subjectPrefix,
    PORT: '0',
    CATALOG_ADDR: upstreams[0]!.address,
    INVENTORY_ADDR: upstreams[1]!.address,
    PAYMENT_ADDR: upstreams[2]!.address,
    SAGA_DEADLINE: '5s',
    SAGA_RETRY_BASE: '20ms',
    SAGA_RETRY_MAX: '100ms',
    SAGA_POLL: '50ms',
    WATCH_POLL: '200ms',
    LOG_LEVEL: 'warn',
  });
  app = await startOrder(config, '127.0.0.1');
  client = createMeshClient(OrderService, `127.0.0.1:${app.server.port}`);
});

test.after.always(async () => {
  await app?.close(0);
  await Promise.all(upstreams.map((s) => s.close(0)));
  closeMeshClients();
  const nc = await connect({ servers: testNatsUrl() });
  const jsm = await nc.jetstreamManager();
  for await (const s of jsm.streams.list()) {
    if (s.config.name.startsWith(streamPrefix(nats.subjectPrefix))) await jsm.streams.delete(s.config.name);
  }
  await nc.close();
  await testDb?.drop();
});

const as = (userId: string) => ({ headers: identityHeaders({ userId, role: 'user' }) });
const key = () => `k-${randomUUID()}`;

/** Watches the order to its final state; returns every status the stream sent. */
async function watchToEnd(id: string, userId: string): Promise<Order[]> {
  const seen: Order[] = [];
  for await (const msg of client.watchOrder({ id }, { ...as(userId), timeoutMs: 10_000 })) seen.push(msg.order!);
  return seen;
}

async function errorOf(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    return ConnectError.from(e);
  }
  throw new Error('expected an error');
}

// ---- tests --------------------------------------------------------------------------

test('happy path: PENDING at once, CONFIRMED through the watch; stock committed, charged once, events in the outbox', async (t) => {
  const user = `u-${randomUUID()}`;
  const { order } = await client.placeOrder(
    { idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 2n }, { sku: 'B-2', quantity: 1n }], paymentToken: 'tok_visa' },
    as(user),
  );
  t.is(order!.status, OrderStatus.PENDING);
  t.is(order!.total!.amountMinor, 340n);
  t.deepEqual(order!.lines.map((l) => [l.sku, l.name, l.lineTotal!.amountMinor]), [
    ['A-1', 'Apple', 300n],
    ['B-2', 'Banana', 40n],
  ]);
  const seen = await watchToEnd(order!.id, user);
  t.is(seen.at(-1)!.status, OrderStatus.CONFIRMED);
  t.is(reservations.get(order!.id)!.status, ReservationStatus.COMMITTED);
  t.is(payments.get(order!.id)!.status, PaymentStatus.CAPTURED);
  t.is(charges.get(order!.id), 1);
  const events = resultRows<{ event_type: string }>(
    await app.database.db.execute(sql`select event_type from "order".outbox where aggregate_id = ${order!.id} order by seq`),
  );
  t.deepEqual(events.map((e) => e.event_type), ['shop.order.v1.OrderPlaced', 'shop.order.v1.OrderConfirmed']);
});

test("WatchMyOrders: one stream per shopper: synced, then each of the caller's orders as placed and at every change; no one else's", async (t) => {
  const user = `u-${randomUUID()}`;
  const other = `u-${randomUUID()}`;
  const stop = new AbortController();
  t.teardown(() => stop.abort());
  const stream = client.watchMyOrders({}, { ...as(user), signal: stop.signal, timeoutMs: 20_000 })[Symbol.asyncIterator]();
  const first = await stream.next();
  t.deepEqual(first.value?.event, { case: 'synced', value: true }, 'no open orders: synced first');

  const place = (who: string, paymentToken: string) =>
    client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken }, as(who));
  const [ok, declined, theirs] = await Promise.all([place(user, 'tok_visa'), place(user, 'tok_declined'), place(other, 'tok_visa')]);

  const seen = new Map<string, string[]>();
  const ended = () => [ok, declined].every((p) => (seen.get(p.order!.id) ?? []).some((s) => s !== 'PENDING'));
  while (!ended()) {
    const { value, done } = await stream.next();
    if (done) break;
    if (value.event.case !== 'order') continue;
    const o = value.event.value;
    const status = OrderStatus[o.status] + (o.cancelReason ? ` ${o.cancelReason}` : '');
    seen.set(o.id, [...(seen.get(o.id) ?? []), status]);
  }
  t.deepEqual(seen.get(ok.order!.id), ['PENDING', 'CONFIRMED']);
  t.deepEqual(seen.get(declined.order!.id), ['PENDING', 'CANCELLED payment declined']);
  t.false(seen.has(theirs.order!.id), "another shopper's order is not sent");
});

test("WatchMyOrders hears another replica's change on its re-read, while this replica's changes keep it busy", async (t) => {
  const user = `u-${randomUUID()}`;
  const stop = new AbortController();
  t.teardown(() => stop.abort());
  const stream = client.watchMyOrders({}, { ...as(user), signal: stop.signal, timeoutMs: 20_000 })[Symbol.asyncIterator]();
  t.is((await stream.next()).value?.event.case, 'synced');
  // Open while the slow card is charged; then "another replica" settles it: a write this
  // process never announces.
  const { order } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: 'tok_slow' }, as(user));
  const pending = await stream.next();
  t.is(pending.value?.event.case === 'order' && pending.value.event.value.status, OrderStatus.PENDING);
  await app.database.db.execute(
    sql`update "order".orders set status = 'CANCELLED', cancel_reason = 'settled elsewhere' where id = ${order!.id}::uuid`,
  );
  // Meanwhile orders of this shopper placed here keep the stream's live path busy (a change
  // heard at least every ~50 ms, under WATCH_POLL's 200 ms), until the change arrives or 40
  // orders later. A watcher that re-read only when idle would hear it only after that.
  let heard = false;
  let busyEnded = false;
  const busy = (async () => {
    for (let i = 0; i < 40 && !heard && !stop.signal.aborted; i++) {
      await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: 'tok_visa' }, as(user));
      await new Promise((r) => setTimeout(r, 50));
    }
    busyEnded = true;
  })();
  for (;;) {
    const { value, done } = await stream.next();
    if (done) return t.fail('the stream ended before the change was heard');
    if (value.event.case === 'order' && value.event.value.id === order!.id) {
      t.false(busyEnded, 'heard while the stream was busy with this replica\'s changes');
      heard = true;
      t.is(value.event.value.status, OrderStatus.CANCELLED);
      t.is(value.event.value.cancelReason, 'settled elsewhere');
      break;
    }
  }
  await busy;
});

test('WatchMyOrders starts with the open orders, then synced', async (t) => {
  const user = `u-${randomUUID()}`;
  // An open order: its saga waits on the slow card while the stream starts.
  const { order } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: 'tok_slow' }, as(user));
  const stop = new AbortController();
  t.teardown(() => stop.abort());
  const stream = client.watchMyOrders({}, { ...as(user), signal: stop.signal, timeoutMs: 20_000 })[Symbol.asyncIterator]();
  const events: string[] = [];
  for (;;) {
    const { value, done } = await stream.next();
    if (done) break;
    if (value.event.case === 'synced') {
      events.push('synced');
      break;
    }
    if (value.event.case === 'order') events.push(`${value.event.value.id} ${OrderStatus[value.event.value.status]}`);
  }
  t.deepEqual(events, [`${order!.id} PENDING`, 'synced']);
});

test('declined payment: CANCELLED "payment declined", stock released, nothing charged', async (t) => {
  const user = `u-${randomUUID()}`;
  const { order } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: 'tok_declined' }, as(user));
  const end = (await watchToEnd(order!.id, user)).at(-1)!;
  t.is(end.status, OrderStatus.CANCELLED);
  t.is(end.cancelReason, 'payment declined');
  t.is(reservations.get(order!.id)!.status, ReservationStatus.RELEASED);
  t.is(charges.get(order!.id), undefined);
});

test('out of stock: CANCELLED "out of stock", nothing held, nothing charged', async (t) => {
  const user = `u-${randomUUID()}`;
  const { order } = await client.placeOrder(
    { idempotencyKey: key(), lines: [{ sku: 'B-2', quantity: 1n }, { sku: 'RARE-1', quantity: 3n }], paymentToken: 'tok_visa' },
    as(user),
  );
  const end = (await watchToEnd(order!.id, user)).at(-1)!;
  t.is(end.status, OrderStatus.CANCELLED);
  t.is(end.cancelReason, 'out of stock');
  // Compensation leaves a tombstone, so a reserve still in flight could not take stock later.
  t.is(reservations.get(order!.id)!.status, ReservationStatus.RELEASED);
  t.is(charges.get(order!.id), undefined);
  t.is(reserved('RARE-1'), 0n);
});

test('the same idempotency key, also concurrently, makes one order', async (t) => {
  const user = `u-${randomUUID()}`;
  const k = key();
  const req = { idempotencyKey: k, lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: 'tok_visa' };
  const results = await Promise.all(Array.from({ length: 10 }, () => client.placeOrder(req, as(user))));
  const ids = new Set(results.map((r) => r.order!.id));
  t.is(ids.size, 1);
  const again = await client.placeOrder(req, as(user));
  t.is(again.order!.id, [...ids][0]);
  // Another user with the same key gets their own order.
  const other = await client.placeOrder(req, as(`u-${randomUUID()}`));
  t.not(other.order!.id, again.order!.id);
  await watchToEnd(again.order!.id, user);
  t.is(charges.get(again.order!.id), 1);
});

test('concurrent PlaceOrders share their insert statement; a key repeated among them or already stored answers the first order', async (t) => {
  const user = `u-${randomUUID()}`;
  const req = (k: string, quantity = 1n) => ({ idempotencyKey: k, lines: [{ sku: 'A-1', quantity }, { sku: 'B-2', quantity: 1n }], paymentToken: 'tok_visa' });
  const storedKey = key();
  const { order: first } = await client.placeOrder(req(storedKey), as(user));

  // The order inserts that carry this user's orders (other tests run meanwhile).
  const inserts: string[] = [];
  const pg = (app.database.db as unknown as { $client: { unsafe: (...a: unknown[]) => unknown } }).$client;
  const unsafe = pg.unsafe.bind(pg);
  pg.unsafe = (text: unknown, params?: unknown, ...rest: unknown[]) => {
    const mine = Array.isArray(params) && params.some((p) => typeof p === 'string' && p.includes(user));
    if (typeof text === 'string' && text.includes('insert into "order".orders') && mine) inserts.push(text);
    return unsafe(text, params, ...rest);
  };
  t.teardown(() => (pg.unsafe = unsafe));

  const fresh = Array.from({ length: 10 }, () => key());
  const repeated = key();
  const asked = [...fresh.map((k, i) => req(k, BigInt(i + 1))), req(repeated), req(storedKey, 5n), req(repeated)];
  const answers = (await Promise.all(asked.map((r) => client.placeOrder(r, as(user))))).map((a) => a.order!);
  pg.unsafe = unsafe;

  t.true(inserts.length < asked.length / 2, `${inserts.length} insert statements for ${asked.length} PlaceOrders`);
  t.true(inserts.some((s) => s.includes('jsonb_to_recordset')), 'some went out together');
  fresh.forEach((_, i) => t.is(answers[i]!.total!.amountMinor, 150n * BigInt(i + 1) + 40n, `order ${i} is its own`));
  t.is(new Set(answers.slice(0, 10).map((o) => o.id)).size, 10);
  t.is(answers[10]!.id, answers[12]!.id, 'a key repeated among them: one order');
  t.is(answers[11]!.id, first!.id, 'a key already stored: the first order');
  t.is(answers[11]!.total!.amountMinor, 190n, 'as it was first placed');

  const rows = resultRows<{ idempotency_key: string; n: number }>(
    await app.database.db.execute(sql`select idempotency_key, count(*)::int as n from "order".orders where user_id = ${user} group by idempotency_key`),
  );
  t.is(rows.length, 12);
  t.true(rows.every((r) => r.n === 1), 'one row per key');
  for (const id of new Set(answers.map((o) => o.id))) t.is((await watchToEnd(id, user)).at(-1)!.status, OrderStatus.CONFIRMED);
  t.is(charges.get(answers[10]!.id), 1);
});

test('bad requests: the field is named; anonymous callers are refused', async (t) => {
  const user = `u-${randomUUID()}`;
  const unknown = await errorOf(client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }, { sku: 'NOPE-9', quantity: 1n }], paymentToken: 'tok_visa' }, as(user)));
  t.is(unknown.code, Code.InvalidArgument);
  t.is(fieldViolations(unknown)[0]?.field, 'lines[1].sku');
  const mixed = await errorOf(client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }, { sku: 'U-1', quantity: 1n }], paymentToken: 'tok_visa' }, as(user)));
  t.is(mixed.code, Code.FailedPrecondition);
  const noToken = await errorOf(client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: '' }, as(user)));
  t.is(fieldViolations(noToken)[0]?.field, 'payment_token');
  const anon = await errorOf(client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: 'tok_visa' }));
  t.is(anon.code, Code.Unauthenticated);
  const badId = await errorOf(client.getOrder({ id: 'nope' }, as(user)));
  t.is(fieldViolations(badId)[0]?.field, 'id');
});

test('concurrent PlaceOrders share catalog calls, and each hears its own answer (products, unknown SKUs, a SKU the catalog refuses)', async (t) => {
  const user = `u-${randomUUID()}`;
  const place = (lines: { sku: string; quantity: bigint }[]) =>
    client.placeOrder({ idempotencyKey: key(), lines, paymentToken: 'tok_visa' }, as(user)).then(
      (r) => ({ ok: r.order! }),
      (e) => ({ err: ConnectError.from(e) }),
    );
  const good = (n: number) => Array.from({ length: n }, (_, i) => place([{ sku: 'C-3', quantity: BigInt(i + 1) }, { sku: 'B-2', quantity: 1n }]));
  const checkGood = (res: Awaited<ReturnType<typeof place>>[]) =>
    res.forEach((r, i) => {
      if (!('ok' in r)) return t.fail(`order ${i}: ${r.err.message}`);
      t.is(r.ok.total?.amountMinor, 7n * BigInt(i + 1) + 40n);
      t.deepEqual(r.ok.lines.map((l) => l.name), ['Cherry', 'Banana']);
    });
  // 16 lookups at once, 4 of them with a SKU the catalog does not know.
  const callsBefore = coalescedCatalogCalls;
  const [g, u] = await Promise.all([
    Promise.all(good(12)),
    Promise.all(Array.from({ length: 4 }, () => place([{ sku: 'C-3', quantity: 1n }, { sku: 'NOPE-7', quantity: 1n }]))),
  ]);
  checkGood(g);
  for (const res of u) {
    t.true('err' in res && res.err.code === Code.InvalidArgument && fieldViolations(res.err)[0]?.field === 'lines[1].sku');
  }
  const calls = coalescedCatalogCalls - callsBefore;
  t.true(calls < 16, `${calls} catalog calls for 16 lookups`);
  // A SKU the catalog refuses fails a shared call: only its own orders hear of it, about their own field.
  const [g2, r] = await Promise.all([
    Promise.all(good(3)),
    Promise.all(Array.from({ length: 3 }, () => place([{ sku: 'REFUSED-1', quantity: 1n }, { sku: 'C-3', quantity: 1n }]))),
  ]);
  checkGood(g2);
  for (const res of r) {
    t.true('err' in res && res.err.code === Code.InvalidArgument && fieldViolations(res.err)[0]?.field === 'lines[0].sku');
  }
  for (const res of [...g, ...g2]) if ('ok' in res) await watchToEnd(res.ok.id, user);
});

test("GetOrder and ListOrders show only the caller's orders, newest first, in pages, filtered by status", async (t) => {
  const user = `u-${randomUUID()}`;
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    const { order } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'B-2', quantity: 1n }], paymentToken: i === 0 ? 'tok_declined' : 'tok_visa' }, as(user));
    ids.push(order!.id);
  }
  for (const id of ids) await watchToEnd(id, user);
  t.is((await client.getOrder({ id: ids[0]! }, as(user))).order!.id, ids[0]);
  t.is((await errorOf(client.getOrder({ id: ids[0]! }, as('someone-else')))).code, Code.NotFound);

  const first = await client.listOrders({ pageSize: 2 }, as(user));
  t.deepEqual(first.orders.map((o) => o.id), [ids[4], ids[3]]);
  const second = await client.listOrders({ pageSize: 2, pageToken: first.nextPageToken }, as(user));
  t.deepEqual(second.orders.map((o) => o.id), [ids[2], ids[1]]);
  const third = await client.listOrders({ pageSize: 2, pageToken: second.nextPageToken }, as(user));
  t.deepEqual(third.orders.map((o) => o.id), [ids[0]]);
  t.is(third.nextPageToken, '');
  const cancelled = await client.listOrders({ status: OrderStatus.CANCELLED }, as(user));
  t.deepEqual(cancelled.orders.map((o) => o.id), [ids[0]]);
  t.is((await client.listOrders({}, as('someone-else'))).orders.length, 0);
});

test('CancelOrder before confirmation compensates; cancelled is idempotent; confirmed is FAILED_PRECONDITION', async (t) => {
  const user = `u-${randomUUID()}`;
  slowMs = 1500;
  const { order } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 3n }], paymentToken: 'tok_slow' }, as(user));
  await new Promise((r) => setTimeout(r, 200)); // reserving done, authorizing (slow)
  const { order: cancelled } = await client.cancelOrder({ id: order!.id, reason: 'changed my mind' }, as(user));
  t.is(cancelled!.status, OrderStatus.CANCELLED);
  t.is(cancelled!.cancelReason, 'changed my mind');
  const again = await client.cancelOrder({ id: order!.id }, as(user));
  t.is(again.order!.cancelReason, 'changed my mind');
  await new Promise((r) => setTimeout(r, 1500)); // the slow authorization lands after the void
  await app.saga.settled(order!.id);
  t.not(reservations.get(order!.id)!.status, ReservationStatus.RESERVED);
  t.not(payments.get(order!.id)!.status, PaymentStatus.AUTHORIZED);
  t.not(payments.get(order!.id)!.status, PaymentStatus.CAPTURED);
  t.is((await client.getOrder({ id: order!.id }, as(user))).order!.status, OrderStatus.CANCELLED);
  slowMs = 300;

  const { order: done } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: 'tok_visa' }, as(user));
  await watchToEnd(done!.id, user);
  t.is((await errorOf(client.cancelOrder({ id: done!.id }, as(user)))).code, Code.FailedPrecondition);
  t.is((await errorOf(client.cancelOrder({ id: done!.id }, as('someone-else')))).code, Code.NotFound);
});

test('a step that fails transiently is retried with backoff and completes', async (t) => {
  const user = `u-${randomUUID()}`;
  const { order } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'FLAKY-1', quantity: 1n }], paymentToken: 'tok_visa' }, as(user));
  t.is((await watchToEnd(order!.id, user)).at(-1)!.status, OrderStatus.CONFIRMED);
  t.is(calls.filter((c) => c === `reserve ${order!.id}`).length, FLAKY_FAILURES + 1);
  t.is(charges.get(order!.id), 1);
});

test('a payment service that stays down past the saga deadline cancels with "timeout" and releases the stock', async (t) => {
  const user = `u-${randomUUID()}`;
  const { order } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'A-1', quantity: 1n }], paymentToken: 'tok_error' }, as(user));
  const end = (await watchToEnd(order!.id, user)).at(-1)!;
  t.is(end.status, OrderStatus.CANCELLED);
  t.is(end.cancelReason, 'timeout');
  t.is(reservations.get(order!.id)!.status, ReservationStatus.RELEASED);
});

test('a saga left mid-way by a dead replica (lease ran out) is claimed by the poller and finished', async (t) => {
  const user = `u-${randomUUID()}`;
  const { order } = await client.placeOrder({ idempotencyKey: key(), lines: [{ sku: 'B-2', quantity: 1n }], paymentToken: 'tok_visa' }, as(user));
  await watchToEnd(order!.id, user);
  // Fake a second order stuck after reserve, held by a replica that died: a foreign lease, already expired.
  const stuck = randomUUID();
  const db = app.database.db;
  await db.execute(sql`insert into "order".orders (id, user_id, idempotency_key, status, currency, total_minor) values (${stuck}, ${user}, ${key()}, 'PENDING', 'EUR', 40)`);
  await db.execute(sql`insert into "order".order_lines (order_id, position, sku, name, quantity, unit_price_minor) values (${stuck}, 0, 'B-2', 'Banana', 1, 40)`);
  await fakeInventory.reserveStock!({ reservationId: stuck, lines: [{ sku: 'B-2', quantity: 1n }] } as never, {} as never);
  await db.execute(sql`insert into "order".sagas (order_id, step, payment_token, lease_token, next_run_at, deadline_at) values (${stuck}, 'authorize', 'tok_visa', ${randomUUID()}, now() - interval '1 second', now() + interval '1 minute')`);
  const end = (await watchToEnd(stuck, user)).at(-1)!;
  t.is(end.status, OrderStatus.CONFIRMED);
  t.is(charges.get(stuck), 1);
  t.is(reservations.get(stuck)!.status, ReservationStatus.COMMITTED);
});

// Serial: ava runs serial tests before the concurrent ones, alone, so this test may pause the
// app's poller for a moment (below) without holding up another test's sagas.
test.serial('several replicas polling one database run each due saga exactly once (FOR UPDATE SKIP LOCKED claims)', async (t) => {
  const user = `u-${randomUUID()}`;
  const db = app.database.db;
  const ids = Array.from({ length: 30 }, () => randomUUID());
  for (const id of ids) {
    await db.execute(sql`insert into "order".orders (id, user_id, idempotency_key, status, currency, total_minor) values (${id}, ${user}, ${key()}, 'PENDING', 'EUR', 40)`);
    await db.execute(sql`insert into "order".order_lines (order_id, position, sku, name, quantity, unit_price_minor) values (${id}, 0, 'B-2', 'Banana', 1, 40)`);
  }
  // Two more replicas besides the app's own poller, on their own connections, all due at once,
  // configured as the app is (retries, lease, subject prefix): they claim any due saga, and one
  // on the defaults (a 5 s backoff) once held another test's saga past its watch's timeout.
  const { SagaOrchestrator } = await import('./saga.js');
  const { OrderChanges } = await import('./changes.js');
  const { openDatabase } = await import('../../mesh/db.js');
  const ports = {
    inventory: createMeshClient(InventoryService, upstreams[1]!.address),
    payment: createMeshClient(PaymentService, upstreams[2]!.address),
  };
  const others = await Promise.all([0, 1].map(() => openDatabase({ context: 'order', url: testDb.url, migrationsFolder: '', migrate: false })));
  const settings = { ...sagaSettingsOf(config, normalizeSubjectPrefix(nats.subjectPrefix)), pollIntervalMs: 20, concurrency: 4 };
  const replicas = others.map((d) => new SagaOrchestrator(d.db, ports, new OrderChanges(), settings));
  const values = sql.join(
    ids.map((id) => sql`(${id}::uuid, 'reserve', 'tok_visa', now() - interval '1 second', now() + interval '1 minute')`),
    sql`, `,
  );
  // The other replicas make the first claims (the app's poller, paused, could otherwise take
  // all 30 in one poll: a CI run saw it), then all three poll for the rest.
  await app.saga.stop();
  let firstClaims: number[];
  try {
    await db.execute(sql`insert into "order".sagas (order_id, step, payment_token, next_run_at, deadline_at) values ${values}`);
    firstClaims = await Promise.all(replicas.map((r) => r.pollOnce()));
  } finally {
    app.saga.start(); // the other tests of this file need it, whatever happened here
  }
  for (const r of replicas) r.start();
  try {
    for (const id of ids) t.is((await watchToEnd(id, user)).at(-1)!.status, OrderStatus.CONFIRMED);
  } finally {
    await Promise.all(replicas.map((r) => r.stop()));
    await Promise.all(others.map((d) => d.close()));
  }
  t.deepEqual(firstClaims, [4, 4], 'each other replica claimed its concurrency, none the same saga');
  for (const id of ids) {
    t.is(calls.filter((c) => c === `reserve ${id}`).length, 1, 'reserved once');
    t.is(calls.filter((c) => c === `authorize ${id}`).length, 1, 'authorized once');
    t.is(calls.filter((c) => c === `capture ${id}`).length, 1, 'captured once');
  }
});
