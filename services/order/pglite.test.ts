/**
 * The order service on embedded PGlite (what the dev command runs when
 * DATABASE_URL is unset): the single-statement writes (data-modifying CTEs,
 * bytea and jsonb parameters), the saga's claims and the relay's wake-up work
 * there too. Upstreams are minimal always-yes fakes; NATS is the real server.
 */
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { sql } from 'drizzle-orm';
import { connect } from 'nats';
import { CatalogService, ProductSchema } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { InventoryService } from '../../gen/shop/inventory/v1/inventory_pb.js';
import { OrderService, OrderStatus } from '../../gen/shop/order/v1/order_pb.js';
import { PaymentSchema, PaymentService, PaymentStatus } from '../../gen/shop/payment/v1/payment_pb.js';
import { closeMeshClients, createMeshClient } from '../../mesh/client.js';
import { parseConfig } from '../../mesh/config.js';
import { resultRows } from '../../mesh/db.js';
import { streamPrefix } from '../../mesh/events/naming.js';
import { identityHeaders } from '../../mesh/identity.js';
import { serve, startMeshServer, type MeshServer } from '../../mesh/server.js';
import { testNatsPrefix, testNatsUrl } from '../../mesh/testing/index.js';
import { orderSettings, startOrder, type OrderApp } from './main.js';

let upstreams: MeshServer[] = [];
let app: OrderApp | undefined;
let dataDir: string;
const nats = testNatsPrefix();

test.before(async () => {
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'order-pglite-'));
  upstreams = await Promise.all([
    startMeshServer({
      name: 'catalog',
      host: '127.0.0.1',
      port: 0,
      services: [
        serve(CatalogService, {
          async batchGetProducts(req) {
            return { products: req.skus.map((sku) => create(ProductSchema, { sku, name: sku, price: { currencyCode: 'EUR', amountMinor: 500n } })), missingSkus: [] };
          },
        }),
      ],
    }),
    startMeshServer({
      name: 'inventory',
      host: '127.0.0.1',
      port: 0,
      services: [serve(InventoryService, { reserveStock: async () => ({}), commitReservation: async () => ({}), releaseReservation: async () => ({}) })],
    }),
    startMeshServer({
      name: 'payment',
      host: '127.0.0.1',
      port: 0,
      services: [
        serve(PaymentService, {
          authorizePayment: async (req) => ({ payment: create(PaymentSchema, { orderId: req.orderId, status: PaymentStatus.AUTHORIZED }) }),
          capturePayment: async (req) => ({ payment: create(PaymentSchema, { orderId: req.orderId, status: PaymentStatus.CAPTURED }) }),
          refundPayment: async () => ({}),
        }),
      ],
    }),
  ]);
  app = await startOrder(
    parseConfig(orderSettings, {
      DATA_DIR: dataDir,
      NATS_URL: testNatsUrl(),
      NATS_SUBJECT_PREFIX: nats.subjectPrefix,
      PORT: '0',
      CATALOG_ADDR: upstreams[0]!.address,
      INVENTORY_ADDR: upstreams[1]!.address,
      PAYMENT_ADDR: upstreams[2]!.address,
      LOG_LEVEL: 'warn',
    }),
    '127.0.0.1',
  );
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
  rmSync(dataDir, { recursive: true, force: true });
});

test('on PGlite an order is placed, confirmed, and its events are published', async (t) => {
  t.is(app!.database.driver, 'pglite');
  const client = createMeshClient(OrderService, `127.0.0.1:${app!.server.port}`);
  const as = { headers: identityHeaders({ userId: `u-${randomUUID()}`, role: 'user' }) };
  const req = { idempotencyKey: `k-${randomUUID()}`, lines: [{ sku: 'PG-1', quantity: 3n }], paymentToken: 'tok_visa' };
  const { order } = await client.placeOrder(req, as);
  t.is(order!.total!.amountMinor, 1500n);
  let last = order!;
  for await (const msg of client.watchOrder({ id: order!.id }, { ...as, timeoutMs: 15_000 })) last = msg.order!;
  t.is(last.status, OrderStatus.CONFIRMED);
  t.is((await client.placeOrder(req, as)).order!.id, order!.id, 'a repeat answers the first order');
  // The relay publishes both events (OrderPlaced, OrderConfirmed).
  const until = Date.now() + 10_000;
  let unpublished = -1;
  while (Date.now() < until) {
    const rows = resultRows<{ n: number | string }>(await app!.database.db.execute(sql`select count(*) as n from "order".outbox where published_at is null`));
    unpublished = Number(rows[0]!.n);
    if (unpublished === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.is(unpublished, 0);
  const total = resultRows<{ n: number | string }>(await app!.database.db.execute(sql`select count(*) as n from "order".outbox`));
  t.is(Number(total[0]!.n), 2);
});
