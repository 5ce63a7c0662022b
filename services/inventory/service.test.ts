/**
 * InventoryService over real gRPC (mesh server + mesh client on TCP) against a
 * fresh Postgres database.
 */
import test from 'ava';
import { create, fromBinary } from '@bufbuild/protobuf';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import { and, asc, eq, lte, sql } from 'drizzle-orm';
import {
  BatchReserveStockRequestSchema,
  InventoryService,
  ReservationStatus,
  StockReleasedSchema,
  StockReservedSchema,
} from '../../gen/shop/inventory/v1/inventory_pb.js';
import { PreconditionFailureSchema } from '../../gen/google/rpc/error_details_pb.js';
import { createMeshTransport, type MeshTransport } from '../../mesh/client.js';
import { openDatabase, resultRows, type MeshDatabase } from '../../mesh/db.js';
import { itemOutcome } from '../../mesh/batch-items.js';
import { fieldViolations } from '../../mesh/errors.js';
import { identityHeaders } from '../../mesh/identity.js';
import { startMeshServer, serve, type MeshServer } from '../../mesh/server.js';
import { createTestDatabase, recordStatements, sameOutcome, settle, type TestDatabase } from '../../mesh/testing/index.js';
import { createClient } from '@connectrpc/connect';
import { outbox, reservations, stock } from './schema.js';
import { inventoryService } from './service.js';
import { InventoryStore } from './store.js';

const ADMIN = { headers: identityHeaders({ userId: 'admin-1', role: 'admin' }) };
const TTL_MS = 15 * 60_000;

let testDb: TestDatabase;
let database: MeshDatabase;
let server: MeshServer;
let transport: MeshTransport;
let client: Client<typeof InventoryService>;
let store: InventoryStore;
/** The store's clock: tests move it forward to expire reservations. */
let clock = Date.parse('2030-01-01T00:00:00Z');

test.before(async () => {
  testDb = await createTestDatabase();
  database = await openDatabase({
    context: 'inventory',
    url: testDb.url,
    maxConnections: 20,
    migrationsFolder: new URL('./migrations', import.meta.url).pathname,
  });
  store = new InventoryStore({ db: database.db, reservationTtlMs: TTL_MS, subjectPrefix: 't.', now: () => clock });
  server = await startMeshServer({
    name: 'inventory',
    host: '127.0.0.1',
    port: 0,
    services: [serve(InventoryService, inventoryService(store))],
  });
  // No retries: a test must see the first answer.
  transport = createMeshTransport({ target: `127.0.0.1:${server.port}`, retry: { maxAttempts: 1 } });
  client = createClient(InventoryService, transport);
});

test.after.always(async () => {
  transport?.close();
  await server?.close(1000);
  await database?.close();
  await testDb?.drop();
});

let skuCounter = 0;
/** A fresh SKU with `onHand` units, so tests sharing the database never meet. */
async function stocked(onHand: number): Promise<string> {
  const sku = `T-${String(++skuCounter).padStart(4, '0')}`;
  await client.setStock({ sku, onHand: BigInt(onHand) }, ADMIN);
  return sku;
}

async function level(sku: string) {
  const { stock: s } = await client.getStock({ sku });
  return { onHand: Number(s!.onHand), reserved: Number(s!.reserved), available: Number(s!.available) };
}

async function eventsOf(aggregateId: string) {
  return database.db
    .select()
    .from(outbox)
    .where(eq(outbox.aggregateId, aggregateId))
    .orderBy(asc(outbox.seq));
}

async function rejects(t: import('ava').ExecutionContext, p: Promise<unknown>, code: Code): Promise<ConnectError> {
  const err = await t.throwsAsync(p);
  t.true(err instanceof ConnectError, String(err));
  t.is((err as ConnectError).code, code, (err as ConnectError).message);
  return err as ConnectError;
}

test('SetStock sets on_hand and GetStock reads it; an unknown SKU reads zero', async (t) => {
  const sku = await stocked(7);
  t.deepEqual(await level(sku), { onHand: 7, reserved: 0, available: 7 });
  const again = await client.setStock({ sku, onHand: 7n }, ADMIN);
  t.is(again.stock!.onHand, 7n);
  t.deepEqual(await level('NEVER-STOCKED'), { onHand: 0, reserved: 0, available: 0 });
});

test('SetStock needs the admin role', async (t) => {
  await rejects(t, client.setStock({ sku: 'ABC-1', onHand: 1n }), Code.Unauthenticated);
  await rejects(
    t,
    client.setStock({ sku: 'ABC-1', onHand: 1n }, { headers: identityHeaders({ userId: 'u', role: 'user' }) }),
    Code.PermissionDenied,
  );
});

// Serial: it counts the statements of the shared database client.
test.serial('SetStock refuses to go below what is reserved, quoting the reserved count its one statement saw', async (t) => {
  const sku = await stocked(10);
  await client.reserveStock({ reservationId: 'below-1', lines: [{ sku, quantity: 6n }] });
  const statements = recordStatements(t, database.db, '"stock"');
  const err = await rejects(t, client.setStock({ sku, onHand: 5n }, ADMIN), Code.FailedPrecondition);
  t.regex(err.message, new RegExp(sku));
  t.regex(err.message, /below the 6 units currently reserved/);
  // The refusal and the count it quotes come from one statement: a second read could quote a
  // count a release had changed in between.
  t.is(statements.length, 1);
  t.deepEqual(await level(sku), { onHand: 10, reserved: 6, available: 4 }, 'a refusal changes nothing');
  const ok = await client.setStock({ sku, onHand: 6n }, ADMIN);
  t.is(ok.stock!.available, 0n);
});

test('bad input names the field, for every RPC', async (t) => {
  const cases: Array<[string, () => Promise<unknown>, string]> = [
    ['SetStock empty sku', () => client.setStock({ sku: '', onHand: 1n }, ADMIN), 'sku'],
    ['SetStock lower-case sku', () => client.setStock({ sku: 'abc', onHand: 1n }, ADMIN), 'sku'],
    ['SetStock negative', () => client.setStock({ sku: 'ABC-1', onHand: -1n }, ADMIN), 'on_hand'],
    ['GetStock empty sku', () => client.getStock({ sku: '' }), 'sku'],
    ['ReserveStock no id', () => client.reserveStock({ reservationId: '', lines: [{ sku: 'ABC-1', quantity: 1n }] }), 'reservation_id'],
    ['ReserveStock no lines', () => client.reserveStock({ reservationId: 'r-bad', lines: [] }), 'lines'],
    ['ReserveStock zero qty', () => client.reserveStock({ reservationId: 'r-bad', lines: [{ sku: 'ABC-1', quantity: 0n }] }), 'lines[0].quantity'],
    ['ReserveStock huge qty', () => client.reserveStock({ reservationId: 'r-bad', lines: [{ sku: 'ABC-1', quantity: 1001n }] }), 'lines[0].quantity'],
    ['ReserveStock bad sku', () => client.reserveStock({ reservationId: 'r-bad', lines: [{ sku: 'a', quantity: 1n }] }), 'lines[0].sku'],
    [
      'ReserveStock duplicate sku',
      () => client.reserveStock({ reservationId: 'r-bad', lines: [{ sku: 'ABC-1', quantity: 1n }, { sku: 'ABC-1', quantity: 2n }] }),
      'lines[1].sku',
    ],
    ['ReleaseReservation no id', () => client.releaseReservation({ reservationId: '' }), 'reservation_id'],
    ['ReleaseReservation bad id', () => client.releaseReservation({ reservationId: 'has space' }), 'reservation_id'],
    ['ReleaseReservation long reason', () => client.releaseReservation({ reservationId: 'x', reason: 'r'.repeat(501) }), 'reason'],
    ['CommitReservation no id', () => client.commitReservation({ reservationId: '' }), 'reservation_id'],
  ];
  for (const [name, call, field] of cases) {
    const err = await rejects(t, call(), Code.InvalidArgument);
    t.is(fieldViolations(err)[0]?.field, field, name);
    t.true(err.rawMessage.startsWith(`${field}:`), `${name}: ${err.rawMessage}`);
  }
  // Nothing was written by any of them.
  const [{ n }] = await database.db.select({ n: sql<number>`count(*)::int` }).from(reservations).where(eq(reservations.id, 'r-bad'));
  t.is(n, 0);
});

test('ReserveStock holds every line, writes StockReserved in the same transaction, and a retry returns the same reservation', async (t) => {
  const a = await stocked(5);
  const b = await stocked(5);
  const first = await client.reserveStock({ reservationId: 'order-1', lines: [{ sku: b, quantity: 2n }, { sku: a, quantity: 3n }] });
  const r = first.reservation!;
  t.is(r.id, 'order-1');
  t.is(r.status, ReservationStatus.RESERVED);
  t.deepEqual(r.lines.map((l) => [l.sku, l.quantity]), [[a, 3n], [b, 2n]]);
  t.is(Number(r.expireTime!.seconds) * 1000, clock + TTL_MS);
  t.deepEqual(await level(a), { onHand: 5, reserved: 3, available: 2 });
  t.deepEqual(await level(b), { onHand: 5, reserved: 2, available: 3 });

  const again = await client.reserveStock({ reservationId: 'order-1', lines: [{ sku: a, quantity: 3n }, { sku: b, quantity: 2n }] });
  t.deepEqual(again.reservation, r);
  t.deepEqual(await level(a), { onHand: 5, reserved: 3, available: 2 }, 'a retry holds nothing more');

  const events = await eventsOf('order-1');
  t.is(events.length, 1, 'one StockReserved for one reservation');
  t.is(events[0]!.eventType, 'shop.inventory.v1.StockReserved');
  t.is(events[0]!.subject, 't.shop.inventory.v1.StockReserved');
  const event = fromBinary(StockReservedSchema, events[0]!.payload);
  t.is(event.reservationId, 'order-1');
  t.deepEqual(event.lines.map((l) => [l.sku, l.quantity]), [[a, 3n], [b, 2n]]);

  await rejects(
    t,
    client.reserveStock({ reservationId: 'order-1', lines: [{ sku: a, quantity: 1n }] }),
    Code.AlreadyExists,
  );
});

test('ReserveStock is all or none: one short line holds nothing and writes no event', async (t) => {
  const plenty = await stocked(10);
  const short = await stocked(1);
  const err = await rejects(
    t,
    client.reserveStock({ reservationId: 'order-short', lines: [{ sku: plenty, quantity: 4n }, { sku: short, quantity: 2n }] }),
    Code.FailedPrecondition,
  );
  t.true(err.rawMessage.startsWith(short), err.rawMessage);
  t.deepEqual(await level(plenty), { onHand: 10, reserved: 0, available: 10 });
  t.deepEqual(await level(short), { onHand: 1, reserved: 0, available: 1 });
  t.is((await eventsOf('order-short')).length, 0);
  t.is((await database.db.select().from(reservations).where(eq(reservations.id, 'order-short'))).length, 0);

  const unknown = await rejects(
    t,
    client.reserveStock({ reservationId: 'order-unknown', lines: [{ sku: 'NO-SUCH-SKU', quantity: 1n }] }),
    Code.FailedPrecondition,
  );
  t.regex(unknown.rawMessage, /^NO-SUCH-SKU/);

  // Once stock arrives, the same id may try again: a failed reserve left nothing behind.
  await client.setStock({ sku: short, onHand: 2n }, ADMIN);
  const ok = await client.reserveStock({ reservationId: 'order-short', lines: [{ sku: plenty, quantity: 4n }, { sku: short, quantity: 2n }] });
  t.is(ok.reservation!.status, ReservationStatus.RESERVED);
});

// Serial: the DDL below must not queue behind (or block) other tests' transactions.
test.serial('a failed outbox write rolls the reservation back', async (t) => {
  const sku = await stocked(3);
  // Make the outbox refuse rows for this aggregate, as a full disk or a bug would.
  await database.db.execute(
    sql.raw(`alter table inventory.outbox add constraint no_doomed check (aggregate_id <> 'order-doomed') not valid`),
  );
  try {
    await rejects(t, client.reserveStock({ reservationId: 'order-doomed', lines: [{ sku, quantity: 2n }] }), Code.Internal);
  } finally {
    await database.db.execute(sql.raw(`alter table inventory.outbox drop constraint no_doomed`));
  }
  t.deepEqual(await level(sku), { onHand: 3, reserved: 0, available: 3 });
  t.is((await database.db.select().from(reservations).where(eq(reservations.id, 'order-doomed'))).length, 0);
});

test.serial('a failed outbox write rolls a release back: the stock stays held', async (t) => {
  const sku = await stocked(3);
  await client.reserveStock({ reservationId: 'order-doomed-rel', lines: [{ sku, quantity: 2n }] });
  await database.db.execute(
    sql.raw(`alter table inventory.outbox add constraint no_doomed_rel check (aggregate_id <> 'order-doomed-rel') not valid`),
  );
  try {
    await rejects(t, client.releaseReservation({ reservationId: 'order-doomed-rel', reason: 'x' }), Code.Internal);
  } finally {
    await database.db.execute(sql.raw(`alter table inventory.outbox drop constraint no_doomed_rel`));
  }
  t.deepEqual(await level(sku), { onHand: 3, reserved: 2, available: 1 });
  const [row] = await database.db.select().from(reservations).where(eq(reservations.id, 'order-doomed-rel'));
  t.is(row!.status, 'RESERVED');
  const ok = await client.releaseReservation({ reservationId: 'order-doomed-rel', reason: 'x' });
  t.is(ok.reservation!.status, ReservationStatus.RELEASED);
  t.deepEqual(await level(sku), { onHand: 3, reserved: 0, available: 3 });
});

test('ReleaseReservation gives stock back once, with StockReleased; repeated calls change nothing', async (t) => {
  const sku = await stocked(4);
  await client.reserveStock({ reservationId: 'order-rel', lines: [{ sku, quantity: 3n }] });
  const released = await client.releaseReservation({ reservationId: 'order-rel', reason: 'payment declined' });
  t.is(released.reservation!.status, ReservationStatus.RELEASED);
  t.deepEqual(await level(sku), { onHand: 4, reserved: 0, available: 4 });
  const again = await client.releaseReservation({ reservationId: 'order-rel', reason: 'payment declined' });
  t.is(again.reservation!.status, ReservationStatus.RELEASED);
  t.deepEqual(await level(sku), { onHand: 4, reserved: 0, available: 4 });

  const events = await eventsOf('order-rel');
  t.deepEqual(events.map((e) => e.eventType), ['shop.inventory.v1.StockReserved', 'shop.inventory.v1.StockReleased']);
  const ev = fromBinary(StockReleasedSchema, events[1]!.payload);
  t.is(ev.reason, 'payment declined');
  t.deepEqual(ev.lines.map((l) => [l.sku, l.quantity]), [[sku, 3n]]);

  // A released id is spent: reserving it again is refused, commit too.
  await rejects(t, client.reserveStock({ reservationId: 'order-rel', lines: [{ sku, quantity: 3n }] }), Code.FailedPrecondition);
  await rejects(t, client.commitReservation({ reservationId: 'order-rel' }), Code.FailedPrecondition);
  t.deepEqual(await level(sku), { onHand: 4, reserved: 0, available: 4 });
});

test('releasing an unknown reservation records a tombstone: a late ReserveStock is refused (FAILED_PRECONDITION)', async (t) => {
  const sku = await stocked(2);
  const r = await client.releaseReservation({ reservationId: 'order-late', reason: 'saga cancelled' });
  t.is(r.reservation!.status, ReservationStatus.RELEASED);
  t.deepEqual(r.reservation!.lines, []);
  t.is((await eventsOf('order-late')).length, 0, 'nothing was held, nothing announced');
  const err = await rejects(t, client.reserveStock({ reservationId: 'order-late', lines: [{ sku, quantity: 1n }] }), Code.FailedPrecondition);
  t.regex(err.rawMessage, /^reservation order-late: was released before it was reserved/);
  t.deepEqual(err.findDetails(PreconditionFailureSchema)[0]?.violations.map((v) => v.type), ['RESERVATION_RELEASED']);
  t.deepEqual(await level(sku), { onHand: 2, reserved: 0, available: 2 });
});

test('CommitReservation sells the stock once; release after commit keeps it sold', async (t) => {
  const sku = await stocked(5);
  await client.reserveStock({ reservationId: 'order-sold', lines: [{ sku, quantity: 2n }] });
  const c1 = await client.commitReservation({ reservationId: 'order-sold' });
  t.is(c1.reservation!.status, ReservationStatus.COMMITTED);
  t.deepEqual(await level(sku), { onHand: 3, reserved: 0, available: 3 });
  const c2 = await client.commitReservation({ reservationId: 'order-sold' });
  t.is(c2.reservation!.status, ReservationStatus.COMMITTED);
  t.deepEqual(await level(sku), { onHand: 3, reserved: 0, available: 3 });
  const rel = await client.releaseReservation({ reservationId: 'order-sold', reason: 'too late' });
  t.is(rel.reservation!.status, ReservationStatus.COMMITTED);
  t.deepEqual(await level(sku), { onHand: 3, reserved: 0, available: 3 });
  const again = await client.reserveStock({ reservationId: 'order-sold', lines: [{ sku, quantity: 2n }] });
  t.is(again.reservation!.status, ReservationStatus.COMMITTED, 'a late retry of the reserve answers the stored reservation');
  await rejects(t, client.commitReservation({ reservationId: 'order-never' }), Code.NotFound);
});

// Serial: 200 calls at once would push other tests' calls past their deadlines.
test.serial('200 concurrent ReserveStock calls for 50 units: exactly 50 succeed, none oversold', async (t) => {
  const sku = await stocked(50);
  const results = await Promise.allSettled(
    Array.from({ length: 200 }, (_, i) =>
      // A generous deadline: this proves correctness, not speed (bench/ measures that),
      // and a loaded CI machine must not turn a slow answer into a failure.
      client.reserveStock({ reservationId: `rush-${i}`, lines: [{ sku, quantity: 1n }] }, { timeoutMs: 60_000 }),
    ),
  );
  const ok = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  t.is(ok.length, 50);
  t.is(refused.length, 150);
  for (const r of refused) t.is((r.reason as ConnectError).code, Code.FailedPrecondition, String(r.reason));
  t.deepEqual(await level(sku), { onHand: 50, reserved: 50, available: 0 });
  const [{ n }] = await database.db
    .select({ n: sql<number>`count(*)::int` })
    .from(reservations)
    .where(sql`${reservations.id} like 'rush-%' and ${reservations.status} = 'RESERVED'`);
  t.is(n, 50);
  const [{ e }] = await database.db
    .select({ e: sql<number>`count(*)::int` })
    .from(outbox)
    .where(sql`${outbox.aggregateId} like 'rush-%'`);
  t.is(e, 50, 'one StockReserved per successful reservation');
});

test('concurrent duplicates of one ReserveStock hold the stock once', async (t) => {
  const sku = await stocked(10);
  const results = await Promise.all(
    Array.from({ length: 10 }, () => client.reserveStock({ reservationId: 'dup-1', lines: [{ sku, quantity: 3n }] })),
  );
  for (const r of results) t.is(r.reservation!.status, ReservationStatus.RESERVED);
  t.deepEqual(await level(sku), { onHand: 10, reserved: 3, available: 7 });
  t.is((await eventsOf('dup-1')).length, 1);
});

test.serial('the sweeper releases expired reservations with reason "expired", once, even with two sweepers', async (t) => {
  const sku = await stocked(6);
  await client.reserveStock({ reservationId: 'exp-1', lines: [{ sku, quantity: 2n }] });
  await client.reserveStock({ reservationId: 'exp-2', lines: [{ sku, quantity: 1n }] });
  clock += TTL_MS - 1;
  await client.reserveStock({ reservationId: 'exp-fresh', lines: [{ sku, quantity: 1n }] });
  t.is(await store.sweepExpired(), 0, 'nothing is due yet');
  clock += 1;
  const [{ due }] = await database.db
    .select({ due: sql<number>`count(*)::int` })
    .from(reservations)
    .where(and(eq(reservations.status, 'RESERVED'), lte(reservations.expireTime, new Date(clock))));
  t.true(due >= 2);
  // Two replicas sweeping at the same moment: each due reservation is released by exactly one.
  const other = new InventoryStore({ db: database.db, reservationTtlMs: TTL_MS, now: () => clock });
  const [a, b] = await Promise.all([store.sweepExpired(), other.sweepExpired()]);
  t.is(a + b, due, `swept ${a} + ${b}`);
  t.deepEqual(await level(sku), { onHand: 6, reserved: 1, available: 5 }, 'only exp-fresh still holds');
  const stored = await database.db.select().from(stock).where(eq(stock.sku, sku));
  t.is(stored[0]!.reserved, 1);
  for (const id of ['exp-1', 'exp-2']) {
    const events = await eventsOf(id);
    t.deepEqual(events.map((e) => e.eventType), ['shop.inventory.v1.StockReserved', 'shop.inventory.v1.StockReleased'], id);
    t.is(fromBinary(StockReleasedSchema, events[1]!.payload).reason, 'expired');
  }
  await rejects(t, client.commitReservation({ reservationId: 'exp-1' }), Code.FailedPrecondition);
  await rejects(t, client.reserveStock({ reservationId: 'exp-1', lines: [{ sku, quantity: 2n }] }), Code.FailedPrecondition);
  clock += TTL_MS;
  t.is(await store.sweepExpired(), 1, 'exp-fresh, now due');
  t.deepEqual(await level(sku), { onHand: 6, reserved: 0, available: 6 });
});

test.serial('commits racing the sweeper: every reservation ends sold or released, and the stock adds up', async (t) => {
  const sku = await stocked(40);
  const ids = Array.from({ length: 20 }, (_, i) => `race-${i}`);
  for (const id of ids) await client.reserveStock({ reservationId: id, lines: [{ sku, quantity: 2n }] });
  clock += TTL_MS; // all due
  const other = new InventoryStore({ db: database.db, reservationTtlMs: TTL_MS, now: () => clock });
  const commits = ids.map((id) =>
    client.commitReservation({ reservationId: id }, { timeoutMs: 60_000 }).then(
      (r) => r.reservation!.status,
      (e: unknown) => ConnectError.from(e).code,
    ),
  );
  const [outcomes] = await Promise.all([Promise.all(commits), store.sweepExpired(5), other.sweepExpired(7), store.sweepExpired()]);
  // Whatever the sweepers left, a last pass takes.
  await store.sweepExpired();
  const sold = outcomes.filter((o) => o === ReservationStatus.COMMITTED).length;
  const refused = outcomes.filter((o) => o === Code.FailedPrecondition).length;
  t.is(sold + refused, ids.length, `outcomes: ${outcomes.join(',')}`);
  const rows = await database.db.select().from(reservations).where(sql`${reservations.id} like 'race-%'`);
  t.is(rows.filter((r) => r.status === 'COMMITTED').length, sold);
  t.is(rows.filter((r) => r.status === 'RELEASED').length, refused);
  t.deepEqual(await level(sku), { onHand: 40 - 2 * sold, reserved: 0, available: 40 - 2 * sold });
});

// ---- batches: each request answered as its single RPC would answer it ----

test('BatchReserveStock answers each request as ReserveStock would: one refusal fails none of the others; a repeated batch changes nothing', async (t) => {
  const a = await stocked(5);
  const short = await stocked(1);
  const c = await stocked(1);
  await client.releaseReservation({ reservationId: 'b-tomb', reason: 'cancelled' });
  const requests = [
    { reservationId: 'b-ok-1', lines: [{ sku: a, quantity: 2n }] },
    { reservationId: 'b-short', lines: [{ sku: a, quantity: 1n }, { sku: short, quantity: 2n }] },
    { reservationId: 'b-bad', lines: [{ sku: a, quantity: 1n }, { sku: a, quantity: 0n }] },
    { reservationId: 'b-tomb', lines: [{ sku: a, quantity: 1n }] },
    { reservationId: 'b-ok-2', lines: [{ sku: c, quantity: 1n }, { sku: a, quantity: 1n }] },
  ];
  const first = (await client.batchReserveStock({ requests })).results.map(itemOutcome);
  t.is(first.length, requests.length);
  t.is((first[0] as { reservation: { status: ReservationStatus } }).reservation.status, ReservationStatus.RESERVED);
  t.is((first[4] as { reservation: { status: ReservationStatus } }).reservation.status, ReservationStatus.RESERVED);
  const shortErr = first[1] as ConnectError;
  t.is(shortErr.code, Code.FailedPrecondition);
  t.is(shortErr.findDetails(PreconditionFailureSchema)[0]?.violations[0]?.type, 'INSUFFICIENT_STOCK');
  const bad = first[2] as ConnectError;
  t.is(bad.code, Code.InvalidArgument);
  t.deepEqual(fieldViolations(bad).map((v) => v.field), ['requests[2].lines[1].sku', 'requests[2].lines[1].quantity']);
  t.is((first[3] as ConnectError).code, Code.FailedPrecondition, 'a tombstoned id is refused');
  t.deepEqual(await level(a), { onHand: 5, reserved: 3, available: 2 }, 'b-ok-1 and b-ok-2 hold, nothing else');
  t.deepEqual(await level(short), { onHand: 1, reserved: 0, available: 1 }, 'b-short is all or nothing');
  t.deepEqual(await level(c), { onHand: 1, reserved: 1, available: 0 });
  for (const id of ['b-ok-1', 'b-ok-2']) t.is((await eventsOf(id)).length, 1, `one StockReserved for ${id}`);
  t.is((await eventsOf('b-short')).length, 0);

  // The whole batch again (a caller retrying it): the same answers, nothing more held or announced.
  const again = (await client.batchReserveStock({ requests })).results.map(itemOutcome);
  for (let i = 0; i < requests.length; i++) sameOutcome(t, again[i], first[i], `repeat of requests[${i}]`);
  t.deepEqual(await level(a), { onHand: 5, reserved: 3, available: 2 });
  for (const id of ['b-ok-1', 'b-ok-2']) t.is((await eventsOf(id)).length, 1);

  // And each single call answers what the batch answered (field names aside: those carry the index).
  for (const i of [0, 1, 3, 4]) sameOutcome(t, first[i], await settle(client.reserveStock(requests[i]!)), `single requests[${i}]`);
});

test('BatchReserveStock and BatchCommitReservations refuse an empty or oversized batch as a whole', async (t) => {
  for (const [name, call] of [
    ['reserve, none', () => client.batchReserveStock({ requests: [] })],
    ['reserve, 101', () => client.batchReserveStock({ requests: Array.from({ length: 101 }, (_, i) => ({ reservationId: `big-${i}`, lines: [{ sku: 'ABC-1', quantity: 1n }] })) })],
    ['commit, none', () => client.batchCommitReservations({ requests: [] })],
  ] as const) {
    const err = await rejects(t, call(), Code.InvalidArgument);
    t.is(fieldViolations(err)[0]?.field, 'requests', name);
  }
  t.is((await database.db.select().from(reservations).where(sql`${reservations.id} like 'big-%'`)).length, 0);
});

test('BatchCommitReservations sells each reservation once, as CommitReservation would, in one statement for the batch', async (t) => {
  const a = await stocked(10);
  const b = await stocked(10);
  await client.reserveStock({ reservationId: 'c-1', lines: [{ sku: a, quantity: 2n }, { sku: b, quantity: 1n }] });
  await client.reserveStock({ reservationId: 'c-2', lines: [{ sku: a, quantity: 3n }] });
  await client.reserveStock({ reservationId: 'c-released', lines: [{ sku: b, quantity: 4n }] });
  await client.releaseReservation({ reservationId: 'c-released', reason: 'payment declined' });
  await client.reserveStock({ reservationId: 'c-done', lines: [{ sku: b, quantity: 1n }] });
  await client.commitReservation({ reservationId: 'c-done' });
  const requests = [
    { reservationId: 'c-1' },
    { reservationId: 'c-unknown' },
    { reservationId: 'c-released' },
    { reservationId: 'has space' },
    { reservationId: 'c-2' },
    { reservationId: 'c-1' },
    { reservationId: 'c-done' },
  ];
  const first = (await client.batchCommitReservations({ requests })).results.map(itemOutcome);
  const status = (o: unknown) => (o instanceof ConnectError ? Code[o.code] : ReservationStatus[(o as { reservation: { status: ReservationStatus } }).reservation.status]);
  t.deepEqual(first.map(status), ['COMMITTED', 'NotFound', 'FailedPrecondition', 'InvalidArgument', 'COMMITTED', 'COMMITTED', 'COMMITTED']);
  t.deepEqual(fieldViolations(first[3] as ConnectError).map((v) => v.field), ['requests[3].reservation_id']);
  sameOutcome(t, first[5], first[0], 'a repeated id in one batch answers the same');
  // Two reservations on SKU a: both moved (an UPDATE moves a row once, so the batch sums per SKU).
  t.deepEqual(await level(a), { onHand: 5, reserved: 0, available: 5 });
  t.deepEqual(await level(b), { onHand: 8, reserved: 0, available: 8 });

  const again = (await client.batchCommitReservations({ requests })).results.map(itemOutcome);
  for (let i = 0; i < requests.length; i++) {
    if (i !== 3) sameOutcome(t, again[i], first[i], `repeat of requests[${i}]`);
    if (i !== 3) sameOutcome(t, first[i], await settle(client.commitReservation(requests[i]!)), `single requests[${i}]`);
  }
  t.deepEqual(await level(a), { onHand: 5, reserved: 0, available: 5 }, 'nothing sold twice');
  t.deepEqual(await level(b), { onHand: 8, reserved: 0, available: 8 });
});

test('concurrent BatchReserveStock calls never oversell: 200 reservations in 10 batches for a SKU with stock 50', async (t) => {
  const sku = await stocked(50);
  const other = await stocked(1000);
  const batches = Array.from({ length: 10 }, (_, b) =>
    client.batchReserveStock(
      {
        requests: Array.from({ length: 20 }, (_, i) => ({
          reservationId: `ob-${b}-${i}`,
          // Half of them also take another SKU, so the batches' lock sets overlap in different shapes.
          lines: i % 2 === 0 ? [{ sku, quantity: 1n }] : [{ sku: other, quantity: 1n }, { sku, quantity: 1n }],
        })),
      },
      { timeoutMs: 60_000 },
    ),
  );
  const outcomes = (await Promise.all(batches)).flatMap((r) => r.results.map(itemOutcome));
  const won = outcomes.filter((o) => !(o instanceof ConnectError)).length;
  const refused = outcomes.filter((o) => o instanceof ConnectError && o.code === Code.FailedPrecondition).length;
  t.is(won, 50);
  t.is(refused, 150);
  t.deepEqual(await level(sku), { onHand: 50, reserved: 50, available: 0 });
  const [{ e }] = await database.db
    .select({ e: sql<number>`count(*)::int` })
    .from(outbox)
    .where(and(sql`${outbox.aggregateId} like 'ob-%'`, eq(outbox.eventType, 'shop.inventory.v1.StockReserved')));
  t.is(e, 50, 'one StockReserved per successful reservation');
});

test('BatchReserveStock serves its items in order against the running stock; a repeated id answers the reservation holding it', async (t) => {
  const a = await stocked(5);
  const b = await stocked(3);
  await client.reserveStock({ reservationId: 'm-stored', lines: [{ sku: a, quantity: 1n }] });
  const outcome = (o: unknown) =>
    o instanceof ConnectError ? `${Code[o.code]}: ${o.rawMessage}` : ReservationStatus[(o as { reservation: { status: ReservationStatus } }).reservation.status];
  const requests = [
    { reservationId: 'm-new', lines: [{ sku: b, quantity: 1n }, { sku: a, quantity: 1n }] },
    // Stored before the batch: the same lines answer it, other lines are refused.
    { reservationId: 'm-stored', lines: [{ sku: a, quantity: 1n }] },
    { reservationId: 'm-stored', lines: [{ sku: a, quantity: 2n }] },
    // a has 3 left: the first of the two takes 2, the second finds 1 and fails alone.
    { reservationId: 'm-first', lines: [{ sku: a, quantity: 2n }] },
    { reservationId: 'm-second', lines: [{ sku: b, quantity: 1n }, { sku: a, quantity: 2n }] },
    // Twice in the batch: the second answers the first's reservation, or ALREADY_EXISTS.
    { reservationId: 'm-new', lines: [{ sku: a, quantity: 1n }, { sku: b, quantity: 1n }] },
    { reservationId: 'm-new', lines: [{ sku: b, quantity: 2n }] },
    // An id whose first try was short may try again later in the batch, as a second call would.
    { reservationId: 'm-retry', lines: [{ sku: b, quantity: 3n }] },
    { reservationId: 'm-retry', lines: [{ sku: b, quantity: 2n }] },
    { reservationId: 'm-late', lines: [{ sku: b, quantity: 1n }] },
  ];
  const first = (await client.batchReserveStock({ requests })).results.map(itemOutcome);
  t.deepEqual(first.map(outcome), [
    'RESERVED',
    'RESERVED',
    'AlreadyExists: reservation m-stored already exists with different lines; a reservation id is used once',
    'RESERVED',
    `FailedPrecondition: ${a}: only 1 available, 2 requested`,
    'RESERVED',
    'AlreadyExists: reservation m-new already exists with different lines; a reservation id is used once',
    `FailedPrecondition: ${b}: only 2 available, 3 requested`,
    'RESERVED',
    `FailedPrecondition: ${b}: only 0 available, 1 requested`,
  ]);
  const second = first[4] as ConnectError;
  t.deepEqual(
    second.findDetails(PreconditionFailureSchema)[0]?.violations.map((v) => [v.type, v.subject]),
    [['INSUFFICIENT_STOCK', a]],
  );
  sameOutcome(t, first[5], first[0], 'the repeat answers the first reservation');
  const held = first[8] as { reservation: { lines: { sku: string; quantity: bigint }[] } };
  t.deepEqual(held.reservation.lines.map((l) => [l.sku, l.quantity]), [[b, 2n]], 'm-retry holds the lines of the try that fit');
  t.deepEqual(await level(a), { onHand: 5, reserved: 4, available: 1 }, 'm-stored 1, m-new 1, m-first 2');
  t.deepEqual(await level(b), { onHand: 3, reserved: 3, available: 0 }, 'm-new 1, m-retry 2');
  const [retryRow] = await database.db.select().from(reservations).where(eq(reservations.id, 'm-retry'));
  t.deepEqual(retryRow!.lines, [{ sku: b, quantity: 2 }]);
  for (const id of ['m-second', 'm-late']) {
    t.is((await database.db.select().from(reservations).where(eq(reservations.id, id))).length, 0, `${id} left no row`);
  }
  for (const [id, n] of [['m-new', 1], ['m-first', 1], ['m-retry', 1], ['m-stored', 1], ['m-second', 0], ['m-late', 0]] as const) {
    t.is((await eventsOf(id)).length, n, `StockReserved events of ${id}`);
  }
  const retryEvent = fromBinary(StockReservedSchema, (await eventsOf('m-retry'))[0]!.payload);
  t.deepEqual(retryEvent.lines.map((l) => [l.sku, l.quantity]), [[b, 2n]]);

  // Each single call now answers as the stored state says, and so does the batch again.
  for (const i of [0, 1, 2, 3, 8]) sameOutcome(t, await settle(client.reserveStock(requests[i]!)), first[i], `single requests[${i}]`);
  const again = (await client.batchReserveStock({ requests })).results.map(itemOutcome);
  t.deepEqual(again.map(outcome).slice(0, 4), first.map(outcome).slice(0, 4));
  t.deepEqual(await level(a), { onHand: 5, reserved: 4, available: 1 }, 'a repeated batch holds nothing more');
});

// Serial: it counts the sessions waiting on a lock in the shared database.
test.serial('two batches inserting the same ids from opposite ends never deadlock, even when both wait on one of them', async (t) => {
  const sku = await stocked(100);
  const ids = Array.from({ length: 10 }, (_, i) => `dl-pair-${i}`);
  const requests = ids.map((reservationId) => ({ reservationId, lines: [{ sku, quantity: 1n }] }));
  const waiting = async () =>
    Number(
      resultRows<{ n: number }>(
        await database.db.execute(sql`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`),
      )[0]!.n,
    );
  let batches: Promise<unknown>[] = [];
  // A transaction of its own inserts the middle id and holds it until both batches wait: each
  // batch that wrote its ids in request order would then hold half of the others' ids, and
  // the two would wait on each other once the middle id is free.
  await database.db
    .transaction(async (tx) => {
      await tx.insert(reservations).values({ id: ids[5]!, status: 'RESERVED', lines: [], expireTime: new Date(clock) });
      batches = [
        client.batchReserveStock({ requests }, { timeoutMs: 60_000 }),
        client.batchReserveStock({ requests: [...requests].reverse() }, { timeoutMs: 60_000 }),
      ];
      for (let i = 0; (await waiting()) < 2; i++) {
        if (i > 500) throw new Error('the batches never waited on the held id');
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error('rollback');
    })
    .catch((err: unknown) => {
      if (!(err instanceof Error && err.message === 'rollback')) throw err;
    });
  const [forward, reverse] = (await Promise.all(batches)) as { results: Parameters<typeof itemOutcome>[0][] }[];
  const statuses = (r: typeof forward) => r!.results.map(itemOutcome).map((o) => (o instanceof ConnectError ? Code[o.code] : 'ok'));
  t.deepEqual(statuses(forward), ids.map(() => 'ok'));
  t.deepEqual(statuses(reverse), ids.map(() => 'ok'), 'the later batch answers the reservations the first made');
  t.deepEqual(await level(sku), { onHand: 100, reserved: 10, available: 90 });
});

// Serial: many calls at once would push other tests' calls past their deadlines.
test.serial('batches sharing ids and SKUs in opposite orders, with single reserves, commits and releases, never deadlock', async (t) => {
  const skus = [await stocked(1000), await stocked(1000), await stocked(1000), await stocked(1000)];
  const lines = (i: number) => [skus[i % 4]!, skus[(i + 1) % 4]!, skus[(i + 3) % 4]!].map((sku) => ({ sku, quantity: 1n }));
  const calls: Promise<unknown>[] = [];
  const opts = { timeoutMs: 60_000 };
  // Fresh ids each round: the two batches both insert them, one from each end.
  for (let round = 0; round < 12; round++) {
    const ids = Array.from({ length: 40 }, (_, i) => `dl-${round}-${String(i).padStart(2, '0')}`);
    const requests = ids.map((id, i) => ({ reservationId: id, lines: lines(i) }));
    for (let pair = 0; pair < 2; pair++) {
      calls.push(client.batchReserveStock({ requests }, opts));
      calls.push(client.batchReserveStock({ requests: [...requests].reverse() }, opts));
    }
    for (const r of requests.filter((_, i) => i % 10 === round % 10)) calls.push(client.reserveStock(r, opts));
    calls.push(client.batchCommitReservations({ requests: ids.slice(0, 4).map((reservationId) => ({ reservationId })) }, opts));
    calls.push(client.releaseReservation({ reservationId: ids[39 - round]!, reason: 'cancelled' }, opts));
  }
  const settled = await Promise.allSettled(calls);
  // Every call answers; an item may be refused (released before its reserve, committed before
  // it was reserved), but no call fails as a whole, which a deadlock would make it do.
  for (const s of settled) {
    if (s.status === 'rejected') {
      const code = ConnectError.from(s.reason).code;
      t.true(code === Code.FailedPrecondition || code === Code.NotFound, String(s.reason));
    }
  }
  // What is held and sold adds up to the reservations' rows.
  const rows = await database.db.select().from(reservations).where(sql`${reservations.id} like 'dl-%'`);
  for (const sku of skus) {
    const sum = (status: string) =>
      rows.filter((r) => r.status === status).reduce((n, r) => n + (r.lines.find((l) => l.sku === sku)?.quantity ?? 0), 0);
    t.deepEqual(await level(sku), { onHand: 1000 - sum('COMMITTED'), reserved: sum('RESERVED'), available: 1000 - sum('COMMITTED') - sum('RESERVED') });
  }
});

test('BatchReserveStock is one statement for the whole batch', async (t) => {
  // A database of its own, so only this test's statements are counted.
  const own = await createTestDatabase(t);
  const ownDatabase = await openDatabase({
    context: 'inventory',
    url: own.url,
    maxConnections: 2,
    migrationsFolder: new URL('./migrations', import.meta.url).pathname,
  });
  t.teardown(() => ownDatabase.close());
  const ownStore = new InventoryStore({ db: ownDatabase.db, reservationTtlMs: TTL_MS });
  for (const sku of ['ONE-1', 'TWO-2']) await ownStore.setStock(sku, 10);
  await ownStore.reserve('s-stored', [{ sku: 'ONE-1', quantity: 1 }]);
  const handler = inventoryService(ownStore);

  const statements: string[] = [];
  const driver = (ownDatabase.db as unknown as { $client: Record<'unsafe' | 'begin', (...a: unknown[]) => unknown> }).$client;
  const { unsafe, begin } = driver;
  driver.unsafe = (text: unknown, ...rest: unknown[]) => (statements.push(String(text)), unsafe.call(driver, text, ...rest));
  driver.begin = (...args: unknown[]) => (statements.push('begin'), begin.apply(driver, args));
  t.teardown(() => Object.assign(driver, { unsafe, begin }));

  const requests = [
    { reservationId: 's-1', lines: [{ sku: 'ONE-1', quantity: 2n }, { sku: 'TWO-2', quantity: 1n }] },
    { reservationId: 's-stored', lines: [{ sku: 'ONE-1', quantity: 1n }] },
    { reservationId: 's-short', lines: [{ sku: 'TWO-2', quantity: 20n }] },
    { reservationId: 's-2', lines: [{ sku: 'TWO-2', quantity: 2n }] },
    { reservationId: 's-1', lines: [{ sku: 'ONE-1', quantity: 2n }, { sku: 'TWO-2', quantity: 1n }] },
  ];
  const answer = await handler.batchReserveStock!(create(BatchReserveStockRequestSchema, { requests }), undefined as never);
  t.deepEqual(
    (answer.results ?? []).map((r) => r.result?.case),
    ['response', 'response', 'error', 'response', 'response'],
  );
  // The relay's wake-up after commit (a NOTIFY here, where no relay of this process publishes
  // the schema: mesh/events/commit-signal.ts) is no part of the reservations' work.
  const work = statements.filter((s) => !s.startsWith('select pg_notify'));
  t.is(work.length, 1, work.join('\n---\n'));
  t.deepEqual(await ownStore.getStock('TWO-2'), { sku: 'TWO-2', onHand: 10, reserved: 3 });
});
