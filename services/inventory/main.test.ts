/**
 * The inventory process as main.ts wires it (config, migrations, seed, NATS
 * stream, outbox relay, expiry sweeper, gRPC server) against a fresh Postgres
 * database and real NATS JetStream under a unique prefix.
 */
import test from 'ava';
import { fromBinary } from '@bufbuild/protobuf';
import { type Client } from '@connectrpc/connect';
import type { NatsConnection } from 'nats';
import {
  InventoryService,
  ReservationStatus,
  StockReleasedSchema,
  StockReservedSchema,
} from '../../gen/shop/inventory/v1/inventory_pb.js';
import { createMeshClient } from '../../mesh/client.js';
import { streamForType } from '../../mesh/events/naming.js';
import { startServiceForTest, type ServiceUnderTest, type TestNatsPrefix } from '../../mesh/testing/index.js';
import { inventorySettings, startInventory, type InventoryApp } from './main.js';
import { catalogSeedSkus, seedQuantity } from './seed.js';

let svc: ServiceUnderTest<InventoryApp>;
let app: InventoryApp;
let client: Client<typeof InventoryService>;
let nc: NatsConnection;
let nats: TestNatsPrefix;

test.before(async () => {
  svc = await startServiceForTest(inventorySettings, (config) => startInventory(config, '127.0.0.1'), {
      // Short, so the background sweeper is seen at work within the test.
    RESERVATION_TTL: '1s',
    RESERVATION_SWEEP_INTERVAL: '100ms',
    SEED_INVENTORY: 'true',
    LOG_LEVEL: 'warn',
  });
  ({ app, nc, nats } = svc);
  client = createMeshClient(InventoryService, app.server.address, { retry: { maxAttempts: 1 } });
});

test.after.always(() => svc?.close());

async function until<T>(what: string, probe: () => Promise<T | undefined | false>, limitMs = 15_000): Promise<T> {
  const end = Date.now() + limitMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The last message on `subject` in the inventory stream, if any. */
async function lastOn(typeName: string) {
  const jsm = await nc.jetstreamManager();
  const stream = streamForType(typeName, nats.subjectPrefix).name;
  return jsm.streams.getMessage(stream, { last_by_subj: `${nats.subjectPrefix}${typeName}` });
}

test('SEED_INVENTORY stocks every catalog seed SKU', async (t) => {
  const skus = catalogSeedSkus();
  t.true(skus.length >= 50);
  for (const sku of [skus[0]!, skus[skus.length - 1]!]) {
    const { stock } = await client.getStock({ sku });
    t.is(Number(stock!.onHand), seedQuantity(sku));
    t.true(stock!.onHand >= 20n && stock!.onHand <= 200n);
  }
});

test('a reservation is published as StockReserved, then expires: the sweeper gives it back and StockReleased says "expired"', async (t) => {
  const sku = catalogSeedSkus()[1]!;
  const before = (await client.getStock({ sku })).stock!;
  const { reservation } = await client.reserveStock({ reservationId: 'main-order-1', lines: [{ sku, quantity: 2n }] });
  t.is(reservation!.status, ReservationStatus.RESERVED);

  const reserved = await until('StockReserved on NATS', () => lastOn(StockReservedSchema.typeName));
  const event = fromBinary(StockReservedSchema, reserved.data);
  t.is(event.reservationId, 'main-order-1');
  t.is(reserved.header.get('Nats-Msg-Id') !== '', true);

  const released = await until('StockReleased on NATS', () => lastOn(StockReleasedSchema.typeName));
  const gone = fromBinary(StockReleasedSchema, released.data);
  t.is(gone.reservationId, 'main-order-1');
  t.is(gone.reason, 'expired');
  const after = (await client.getStock({ sku })).stock!;
  t.deepEqual(after, before);
  // An expired reservation is spent: the saga must not find its stock held again.
  const err = await t.throwsAsync(client.commitReservation({ reservationId: 'main-order-1' }));
  t.regex(String(err?.message), /expired/);
});
