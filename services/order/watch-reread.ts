/**
 * WatchMyOrders' periodic re-read, shared by the streams of one process.
 *
 * Every stream re-reads its shopper's orders every watchPollMs: that is how a change made by
 * another replica reaches it. Read one stream at a time, that was two statements per stream
 * per period (the open orders, then their lines), plus one per order that left the open list:
 * 2,000 statements a second for 1,000 shoppers watching, whatever they do. Here the streams
 * re-read on a shared beat (`nextRereadAt`: multiples of watchPollMs on the clock), and the
 * re-reads that meet go out together through mesh/coalesce: the first alone, those arriving
 * while it is in flight as one statement. One statement answers a batch: each shopper's
 * open orders (PENDING, newest first, at most OPEN_ORDERS_READ) and the orders the stream
 * had as open that are now final, with their lines.
 *
 * What a stream hears is what its own two reads would have told it, a batch or not: a
 * shopper sees only their own orders (the ids a stream asks about are matched to its user).
 */
import { Coalescer } from '../../mesh/coalesce.js';
import type { Database } from '../../mesh/db.js';
import type { Order } from '../../gen/shop/order/v1/order_pb.js';
import { runStatement } from './statements.js';
import { loadedOrderColumns, orderFromLoaded, orderToProto, type LoadedOrderRow } from './store.js';

/** One stream's re-read: its shopper, and the ids it last saw open. */
export interface RereadAsk {
  userId: string;
  knownOpen: readonly string[];
}

export interface Reread {
  /** The shopper's open orders, oldest first. */
  open: Order[];
  /** Of `knownOpen`, the ones that are no longer open (final), as they are now. */
  left: Order[];
}

/** Most open orders read per shopper: one page of the newest (an order stays open seconds). */
export const OPEN_ORDERS_READ = 500;

/** The next shared beat after `now`: streams of one process re-read at the same moments. */
export function nextRereadAt(now: number, watchPollMs: number): number {
  return (Math.floor(now / watchPollMs) + 1) * watchPollMs;
}

// Users and ids go in as JSON arrays: one fixed text for any batch size (one prepared
// statement), and PGlite takes it as postgres.js does.
const REREAD = `
      with asked as (
        select distinct u.user_id from jsonb_array_elements_text($1::jsonb) as u(user_id)
      ), picked as (
        select o.* from asked cross join lateral (
          select * from "order".orders o
          where o.user_id = asked.user_id and o.status = 'PENDING'
          order by o.seq desc limit ${OPEN_ORDERS_READ}
        ) o
        union all
        select o.* from "order".orders o
        where o.id in (select (jsonb_array_elements_text($2::jsonb))::uuid) and o.status <> 'PENDING'
          and o.user_id in (select user_id from asked)
      )
      select ${loadedOrderColumns('p')}
      from picked p
      order by p.seq`;

/** Re-reads for several streams with one statement; one answer per ask, in order. */
export async function rereadOrders(db: Database, asks: readonly RereadAsk[]): Promise<Reread[]> {
  const users = [...new Set(asks.map((a) => a.userId))];
  const ids = [...new Set(asks.flatMap((a) => a.knownOpen))];
  const rows = await runStatement<LoadedOrderRow>(db, REREAD, [JSON.stringify(users), JSON.stringify(ids)]);
  const orders = rows.map((r) => {
    const { row, lines } = orderFromLoaded(r);
    return { userId: row.userId, status: row.status, order: orderToProto(row, lines) };
  });
  return asks.map((ask) => {
    const known = new Set(ask.knownOpen);
    const mine = orders.filter((o) => o.userId === ask.userId);
    return {
      open: mine.filter((o) => o.status === 'PENDING').map((o) => o.order),
      left: mine.filter((o) => o.status !== 'PENDING' && known.has(o.order.id)).map((o) => o.order),
    };
  });
}

/** The process's shared re-reader: `reread(ask)` answers as rereadOrders would for that ask alone. */
export function createWatchRereader(db: Database): { reread(ask: RereadAsk): Promise<Reread> } {
  const coalescer = new Coalescer<RereadAsk, Reread>({
    name: 'WatchMyOrders re-read',
    sendOne: async (ask) => (await rereadOrders(db, [ask]))[0]!,
    sendBatch: (asks) => rereadOrders(db, asks),
    maxItems: 200,
  });
  return { reread: (ask) => coalescer.call(ask) };
}
