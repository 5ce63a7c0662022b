/**
 * Reading orders back: rows to the contract's `Order`, and the few queries
 * that service.ts (GetOrder, ListOrders, WatchOrder) and saga.ts share.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { and, asc, desc, eq, inArray, lt, type SQL } from 'drizzle-orm';
import type { Database } from '../../mesh/db.js';
import type { Money } from '../../gen/shop/common/v1/money_pb.js';
import { MoneySchema } from '../../gen/shop/common/v1/money_pb.js';
import { OrderLineSchema, OrderSchema, OrderStatus, type Order, type OrderLine } from '../../gen/shop/order/v1/order_pb.js';
import type { OrderStatusName } from './domain.js';
import { orderLines, orders, type OrderLineRow, type OrderRow } from './schema.js';
import { runStatement } from './statements.js';

export const STATUS_TO_PROTO: Record<OrderStatusName, OrderStatus> = {
  PENDING: OrderStatus.PENDING,
  CONFIRMED: OrderStatus.CONFIRMED,
  CANCELLED: OrderStatus.CANCELLED,
};

export function statusFromProto(status: OrderStatus): OrderStatusName | undefined {
  switch (status) {
    case OrderStatus.PENDING:
      return 'PENDING';
    case OrderStatus.CONFIRMED:
      return 'CONFIRMED';
    case OrderStatus.CANCELLED:
      return 'CANCELLED';
    default:
      return undefined;
  }
}

export function money(currency: string, amountMinor: bigint): Money {
  return create(MoneySchema, { currencyCode: currency, amountMinor });
}

export function lineToProto(currency: string, line: Pick<OrderLineRow, 'sku' | 'name' | 'quantity' | 'unitPriceMinor'>): OrderLine {
  return create(OrderLineSchema, {
    sku: line.sku,
    name: line.name,
    quantity: line.quantity,
    unitPrice: money(currency, line.unitPriceMinor),
    lineTotal: money(currency, line.unitPriceMinor * line.quantity),
  });
}

export function orderToProto(row: OrderRow, lines: Pick<OrderLineRow, 'sku' | 'name' | 'quantity' | 'unitPriceMinor'>[]): Order {
  return create(OrderSchema, {
    id: row.id,
    userId: row.userId,
    status: STATUS_TO_PROTO[row.status],
    lines: lines.map((l) => lineToProto(row.currency, l)),
    total: money(row.currency, row.totalMinor),
    cancelReason: row.cancelReason,
    createTime: timestampFromDate(row.createTime),
    updateTime: timestampFromDate(row.updateTime),
  });
}

/** The lines of each order, in the order they were placed. */
export async function linesOf(db: Database, orderIds: string[]): Promise<Map<string, OrderLineRow[]>> {
  const byOrder = new Map<string, OrderLineRow[]>(orderIds.map((id) => [id, []]));
  if (orderIds.length === 0) return byOrder;
  const rows = await db
    .select()
    .from(orderLines)
    .where(orderIds.length === 1 ? eq(orderLines.orderId, orderIds[0]!) : inArray(orderLines.orderId, orderIds))
    .orderBy(asc(orderLines.orderId), asc(orderLines.position));
  for (const row of rows) byOrder.get(row.orderId)?.push(row);
  return byOrder;
}

/**
 * One order with its lines, or undefined; `userId` restricts it to that
 * user's orders. One round trip (the lines come aggregated as JSON): GetOrder
 * and every WatchOrder start read through here.
 */
export async function loadOrder(db: Database, id: string, userId?: string): Promise<{ row: OrderRow; lines: OrderLineRow[] } | undefined> {
  const rows = await runStatement<LoadedOrderRow>(db, userId === undefined ? LOAD_ORDER : LOAD_OWN_ORDER, userId === undefined ? [id] : [id, userId]);
  const r = rows[0];
  return r ? orderFromLoaded(r) : undefined;
}

/** A row of LOAD_ORDER's shape: the order's columns and its lines aggregated as JSON. */
export interface LoadedOrderRow {
  id: string;
  seq: string | number;
  user_id: string;
  idempotency_key: string;
  status: OrderStatusName;
  currency: string;
  total_minor: string | number;
  cancel_reason: string;
  create_time: string | Date;
  update_time: string | Date;
  lines: string | Array<{ sku: string; name: string; quantity: string | number; unit_price_minor: string | number; position: number }>;
}

export function orderFromLoaded(r: LoadedOrderRow): { row: OrderRow; lines: OrderLineRow[] } {
  const lines = typeof r.lines === 'string' ? (JSON.parse(r.lines) as Exclude<typeof r.lines, string>) : r.lines;
  return {
    row: {
      id: r.id,
      seq: BigInt(r.seq),
      userId: r.user_id,
      idempotencyKey: r.idempotency_key,
      status: r.status,
      currency: r.currency,
      totalMinor: BigInt(r.total_minor),
      cancelReason: r.cancel_reason,
      createTime: new Date(r.create_time),
      updateTime: new Date(r.update_time),
    },
    lines: lines.map((l) => ({
      orderId: r.id,
      position: l.position,
      sku: l.sku,
      name: l.name,
      quantity: BigInt(l.quantity),
      unitPriceMinor: BigInt(l.unit_price_minor),
    })),
  };
}

/** The select list of a LoadedOrderRow, for "order".orders under the alias `o`. */
export function loadedOrderColumns(o: string): string {
  return `${o}.id, ${o}.seq, ${o}.user_id, ${o}.idempotency_key, ${o}.status, ${o}.currency, ${o}.total_minor, ${o}.cancel_reason,
             ${o}.create_time, ${o}.update_time,
             (select coalesce(json_agg(json_build_object('sku', l.sku, 'name', l.name, 'quantity', l.quantity::text,
                                                         'unit_price_minor', l.unit_price_minor::text, 'position', l.position)
                                       order by l.position), '[]'::json)
              from "order".order_lines l where l.order_id = ${o}.id) as lines`;
}

/** loadOrder's statement (fixed text, see statements.ts); LOAD_OWN_ORDER also requires the user ($2). */
const LOAD_ORDER = `
      select ${loadedOrderColumns('o')}
      from "order".orders o
      where o.id = $1::uuid`;
const LOAD_OWN_ORDER = `${LOAD_ORDER} and o.user_id = $2`;

/** A user's orders newest first, `limit` of them, strictly older than `beforeSeq` when given. */
export async function listOrders(
  db: Database,
  q: { userId: string; status?: OrderStatusName; beforeSeq?: bigint; limit: number },
): Promise<{ row: OrderRow; lines: OrderLineRow[] }[]> {
  const conds: SQL[] = [eq(orders.userId, q.userId)];
  if (q.status) conds.push(eq(orders.status, q.status));
  if (q.beforeSeq !== undefined) conds.push(lt(orders.seq, q.beforeSeq));
  const rows = await db
    .select()
    .from(orders)
    .where(and(...conds))
    .orderBy(desc(orders.seq))
    .limit(q.limit);
  const lines = await linesOf(db, rows.map((r) => r.id));
  return rows.map((row) => ({ row, lines: lines.get(row.id) ?? [] }));
}
