// WatchMyOrders' shared re-read: one statement answers several streams, each with its own
// shopper's open orders and the orders it had as open that went final, never anyone else's.
import test, { type ExecutionContext } from 'ava';
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { openDatabase, type Database } from '../../mesh/db.js';
import { createTestDatabase, recordStatements } from '../../mesh/testing/index.js';
import { orderMigrations } from './main.js';
import { createWatchRereader, nextRereadAt, rereadOrders, type Reread } from './watch-reread.js';

async function orderDb(t: ExecutionContext): Promise<{ db: Database; statements: string[] }> {
  const testDb = await createTestDatabase(t);
  const database = await openDatabase({ context: 'order', url: testDb.url, migrationsFolder: orderMigrations, maxConnections: 2 });
  t.teardown(() => database.close());
  // Counts the re-read statements the driver is given.
  return { db: database.db, statements: recordStatements(t, database.db, 'jsonb_array_elements_text') };
}

async function placeRow(db: Database, userId: string, status: 'PENDING' | 'CONFIRMED' | 'CANCELLED', sku = 'A-1'): Promise<string> {
  const id = randomUUID();
  await db.execute(sql`insert into "order".orders (id, user_id, idempotency_key, status, currency, total_minor, cancel_reason)
    values (${id}::uuid, ${userId}, ${id}, ${status}, 'EUR', 250, ${status === 'CANCELLED' ? 'out of stock' : ''})`);
  await db.execute(sql`insert into "order".order_lines (order_id, position, sku, name, quantity, unit_price_minor)
    values (${id}::uuid, 0, ${sku}, 'Apple', 2, 125)`);
  return id;
}

const ids = (r: Reread) => ({ open: r.open.map((o) => o.id), left: r.left.map((o) => o.id) });

test('one statement answers each stream with its own open orders (oldest first) and its known-open orders that went final', async (t) => {
  const { db, statements } = await orderDb(t);
  const [ann, bob] = ['u-ann', 'u-bob'];
  const annOpen1 = await placeRow(db, ann, 'PENDING');
  const annDone = await placeRow(db, ann, 'CONFIRMED');
  const annCancelled = await placeRow(db, ann, 'CANCELLED');
  const annOpen2 = await placeRow(db, ann, 'PENDING', 'B-2');
  const bobOpen = await placeRow(db, bob, 'PENDING');
  const bobDone = await placeRow(db, bob, 'CONFIRMED');

  const [forAnn, forBob, forNobody] = await rereadOrders(db, [
    // Ann's stream had annOpen1, annDone and annCancelled open; it also names Bob's final order, which it must not get.
    { userId: ann, knownOpen: [annOpen1, annDone, annCancelled, bobDone, randomUUID()] },
    { userId: bob, knownOpen: [bobDone] },
    { userId: 'u-nobody', knownOpen: [] },
  ]);
  t.is(statements.length, 1);
  t.deepEqual(ids(forAnn!), { open: [annOpen1, annOpen2], left: [annDone, annCancelled] });
  t.deepEqual(ids(forBob!), { open: [bobOpen], left: [bobDone] });
  t.deepEqual(ids(forNobody!), { open: [], left: [] });

  // Each order as GetOrder would give it: status, reason, lines, total.
  const cancelled = forAnn!.left[1]!;
  t.is(cancelled.cancelReason, 'out of stock');
  t.deepEqual(forAnn!.open[1]!.lines.map((l) => [l.sku, l.quantity, l.lineTotal?.amountMinor]), [['B-2', 2n, 250n]]);
  t.is(forAnn!.open[1]!.total?.amountMinor, 250n);
});

test('concurrent re-reads go out together: the first alone, the rest as one statement, each answered as if alone', async (t) => {
  const { db, statements } = await orderDb(t);
  const users = Array.from({ length: 6 }, (_, i) => `u-${i}`);
  const open = await Promise.all(users.map((u) => placeRow(db, u, 'PENDING')));
  const done = await Promise.all(users.map((u) => placeRow(db, u, 'CONFIRMED')));
  const alone = await Promise.all(users.map((u, i) => rereadOrders(db, [{ userId: u, knownOpen: [done[i]!] }])));
  statements.length = 0;

  const rereader = createWatchRereader(db);
  const together = await Promise.all(users.map((u, i) => rereader.reread({ userId: u, knownOpen: [done[i]!] })));
  t.is(statements.length, 2, 'the first alone, the five that arrived meanwhile together');
  users.forEach((_, i) => {
    t.deepEqual(ids(together[i]!), { open: [open[i]!], left: [done[i]!] });
    t.deepEqual(ids(together[i]!), ids(alone[i]![0]!));
  });
});

test('nextRereadAt: the next multiple of the period, strictly after now, the same for every stream of a beat', (t) => {
  t.is(nextRereadAt(10_000, 1000), 11_000);
  t.is(nextRereadAt(10_001, 1000), 11_000);
  t.is(nextRereadAt(10_999, 1000), 11_000);
  t.is(nextRereadAt(1_234, 200), 1_400);
});
