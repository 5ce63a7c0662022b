/**
 * What the saga end-to-end tests (test/saga*.test.ts) share: the whole shop
 * as child processes on a fresh database and a NATS prefix of this run,
 * typed gRPC clients straight to each service (the gateway is not under test
 * here), a registered and logged-in shopper, and small waiting helpers.
 *
 * Identity: a service trusts x-mesh-user-id / x-mesh-user-role, which the
 * gateway sets after verifying the JWT. These tests call the services
 * directly, so they set the same metadata from the Login response.
 */
import { randomUUID } from 'node:crypto';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import type { DescService } from '@bufbuild/protobuf';
import { connect } from 'nats';
import { InventoryService } from '../gen/shop/inventory/v1/inventory_pb.js';
import { NotificationService } from '../gen/shop/notification/v1/notification_pb.js';
import { OrderService, OrderStatus, type Order } from '../gen/shop/order/v1/order_pb.js';
import { PaymentService } from '../gen/shop/payment/v1/payment_pb.js';
import { UserService } from '../gen/shop/user/v1/user_pb.js';
import { CatalogService } from '../gen/shop/catalog/v1/catalog_pb.js';
import { createMeshTransport, type MeshTransport } from '../mesh/client.js';
import { createClient } from '@connectrpc/connect';
import { identityHeaders } from '../mesh/identity.js';
import { streamPrefix } from '../mesh/events/naming.js';
import { createTestDatabase, testNatsPrefix, testNatsUrl, type TestDatabase } from '../mesh/testing/index.js';
import { runSeeds, startStack, type ShopService, type Stack } from '../scripts/stack.js';

export interface Shop {
  stack: Stack;
  db: TestDatabase;
  natsUrl: string;
  subjectPrefix: string;
  order: Client<typeof OrderService>;
  user: Client<typeof UserService>;
  inventory: Client<typeof InventoryService>;
  payment: Client<typeof PaymentService>;
  notification: Client<typeof NotificationService>;
  catalog: Client<typeof CatalogService>;
  close(): Promise<void>;
}

/** Settings that make the saga quick to recover in tests (a crashed worker's lease runs out in 3 s). */
export const FAST_SAGA_ENV = {
  SAGA_LEASE: '3s',
  SAGA_POLL: '200ms',
  SAGA_RETRY_BASE: '50ms',
  SAGA_RETRY_MAX: '500ms',
  WATCH_POLL: '300ms',
};

export async function startShop(options: { natsUrl?: string; orderEnv?: Record<string, string> } = {}): Promise<Shop> {
  const db = await createTestDatabase();
  const nats = testNatsPrefix();
  const natsUrl = options.natsUrl ?? testNatsUrl();
  const env = { DATABASE_URL: db.url, NATS_URL: natsUrl, NATS_SUBJECT_PREFIX: nats.subjectPrefix, LOG_LEVEL: 'info' };
  let stack: Stack | undefined;
  const transports: MeshTransport[] = [];
  try {
    await runSeeds({ ...process.env, ...env });
    stack = await startStack({ env, serviceEnv: { order: { ...FAST_SAGA_ENV, ...options.orderEnv } }, readyTimeoutMs: 90_000 });
    const s = stack;
    // Own transports (not the shared pool): each test file's shop has its own ports.
    const clientOf = <S extends DescService>(service: S, name: ShopService): Client<S> => {
      const transport = createMeshTransport({ target: s.addr(name) });
      transports.push(transport);
      return createClient(service, transport);
    };
    return {
      stack: s,
      db,
      natsUrl,
      subjectPrefix: nats.subjectPrefix,
      order: clientOf(OrderService, 'order'),
      user: clientOf(UserService, 'user'),
      inventory: clientOf(InventoryService, 'inventory'),
      payment: clientOf(PaymentService, 'payment'),
      notification: clientOf(NotificationService, 'notification'),
      catalog: clientOf(CatalogService, 'catalog'),
      async close() {
        for (const t of transports) t.close();
        await s.stop();
        await deleteStreams(natsUrl, nats.subjectPrefix).catch(() => {});
        await db.drop();
      },
    };
  } catch (err) {
    await stack?.stop().catch(() => {});
    await db.drop().catch(() => {});
    throw err;
  }
}

async function deleteStreams(natsUrl: string, subjectPrefix: string): Promise<void> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await nc.jetstreamManager();
    for await (const s of jsm.streams.list()) {
      if (s.config.name.startsWith(streamPrefix(subjectPrefix))) await jsm.streams.delete(s.config.name);
    }
  } finally {
    await nc.close();
  }
}

export interface Shopper {
  userId: string;
  /** Call options carrying the shopper's identity. */
  as: { headers: Record<string, string> };
}

/** Registers a new shopper and logs in, as the storefront does. */
export async function newShopper(shop: Shop): Promise<Shopper> {
  const email = `shopper-${randomUUID()}@example.test`;
  const password = 'correct horse battery staple';
  await shop.user.register({ email, password, displayName: 'Saga Tester' });
  const login = await shop.user.login({ email, password });
  const userId = login.user!.id;
  return { userId, as: { headers: identityHeaders({ userId, role: 'user' }) } };
}

export const ADMIN = { headers: identityHeaders({ userId: 'saga-test-admin', role: 'admin' }) };

/** Sets a SKU's stock on hand and returns its level. */
export async function setStock(shop: Shop, sku: string, onHand: number) {
  return (await shop.inventory.setStock({ sku, onHand: BigInt(onHand) }, ADMIN)).stock!;
}

export async function available(shop: Shop, sku: string): Promise<bigint> {
  return (await shop.inventory.getStock({ sku })).stock!.available;
}

export function isFinal(order: Order): boolean {
  return order.status === OrderStatus.CONFIRMED || order.status === OrderStatus.CANCELLED;
}

/** Follows WatchOrder to the end (reconnecting if the order service restarts); returns the final order. */
export async function watchToEnd(shop: Shop, id: string, who: Shopper, timeoutMs = 30_000): Promise<Order> {
  const until = Date.now() + timeoutMs;
  let last: Order | undefined;
  while (Date.now() < until) {
    try {
      for await (const msg of shop.order.watchOrder({ id }, { ...who.as, timeoutMs: until - Date.now() })) last = msg.order;
      if (last && isFinal(last)) return last;
    } catch (err) {
      const e = ConnectError.from(err);
      if (e.code !== Code.Unavailable && e.code !== Code.Canceled) throw e;
      await sleep(200);
    }
  }
  throw new Error(`order ${id} did not reach a final state within ${timeoutMs} ms (last: ${last ? OrderStatus[last.status] : 'none'})`);
}

/** Polls `read` until `ok` holds (eventual effects: points, notifications). */
export async function eventually<T>(read: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 20_000, what = 'condition'): Promise<T> {
  const until = Date.now() + timeoutMs;
  let v = await read();
  while (!ok(v)) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? String(x) : x))}`);
    await sleep(200);
    v = await read();
  }
  return v;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A SKU of the seeded catalog, different per caller so tests in one file do not share stock. */
export async function seededSkus(shop: Shop, n: number): Promise<{ sku: string; price: bigint }[]> {
  const res = await shop.catalog.listProducts({ pageSize: 100 });
  if (res.products.length < n) throw new Error(`the seeded catalog has ${res.products.length} products, need ${n}`);
  return res.products.slice(0, n).map((p) => ({ sku: p.sku, price: p.price!.amountMinor }));
}
