/**
 * OrderService handlers: read the request, apply the rules of domain.ts,
 * store, answer. The saga itself lives in saga.ts; PlaceOrder only writes its
 * first row and hands it over, CancelOrder hands it to compensation.
 */
import { randomUUID } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { timestampFromDate, timestampNow } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, type Client, type ServiceImpl } from '@connectrpc/connect';
import { and, eq } from 'drizzle-orm';
import type { Database } from '../../mesh/db.js';
import { failedPrecondition, fieldViolations, invalidArgument, invalidArguments, notFound } from '../../mesh/errors.js';
import { requireUser } from '../../mesh/identity.js';
import { CatalogService } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { OrderPlacedSchema, OrderSchema, OrderService, type Order } from '../../gen/shop/order/v1/order_pb.js';
import type { OrderChange, OrderChanges, UserOrderChange } from './changes.js';
import { SentOrders } from './sent-orders.js';
import {
  cancelReason,
  decodePageToken,
  encodePageToken,
  isFinal,
  pageSize,
  priceOrder,
  validatePlaceOrder,
  type CatalogPrice,
  type LineInput,
  type PricedOrder,
} from './domain.js';
import type { SagaOrchestrator, SagaSubject } from './saga.js';
import { orders, type OrderRow } from './schema.js';
import { outboxRow } from './writes.js';
import { createOrderInserter } from './place-batch.js';
import { CatalogPrices } from './prices.js';
import { createWatchRereader, nextRereadAt } from './watch-reread.js';
import { lineToProto, linesOf, listOrders, loadOrder, money, orderToProto, STATUS_TO_PROTO, statusFromProto } from './store.js';

const ORDER = 'shop.order.v1.Order';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface OrderServiceDeps {
  db: Database;
  catalog: Client<typeof CatalogService>;
  saga: SagaOrchestrator;
  changes: OrderChanges;
  /** How long a saga may take to reach confirm before it gives up with "timeout". */
  sagaDeadlineMs: number;
  /** NATS subject prefix of the events written to the outbox. */
  subjectPrefix: string;
  /** WatchOrder's re-read period: how late a change made by another replica can be seen. */
  watchPollMs?: number;
}

export function createOrderService(deps: OrderServiceDeps): ServiceImpl<typeof OrderService> {
  const { db, saga, changes } = deps;
  const watchPollMs = deps.watchPollMs ?? 1000;
  // Concurrent PlaceOrders share their catalog calls (prices.ts).
  const prices = new CatalogPrices(deps.catalog);
  // Concurrent PlaceOrders share their insert statement and its commit (place-batch.ts).
  const inserter = createOrderInserter(db);
  // WatchMyOrders streams share their periodic re-reads (watch-reread.ts).
  const rereader = createWatchRereader(db);

  return {
    /**
     * Idempotent by (user, idempotency_key): the insert is skipped when the
     * key exists (unique index, ON CONFLICT DO NOTHING), and then the first
     * order is read and answered. Two concurrent firsts meet at the index:
     * the second waits for the first to commit, writes nothing, and answers
     * the first's order.
     */
    async placeOrder(req, ctx) {
      const caller = requireUser(ctx);
      const input = validatePlaceOrder({ idempotencyKey: req.idempotencyKey, lines: req.lines, paymentToken: req.paymentToken });
      // New orders are the common case: price, then insert-unless-the-key-exists
      // in one statement. A repeat is answered from the first order; when the
      // pricing fails, a repeat is still answered (its order needs no pricing).
      let priced: PricedOrder;
      try {
        priced = await price(prices, input.lines);
      } catch (err) {
        const existing = await findByKey(db, caller.userId, input.idempotencyKey);
        if (existing) return { order: existing };
        throw err;
      }

      const id = randomUUID();
      const leaseToken = randomUUID();
      const event = outboxRow(
        OrderPlacedSchema,
        create(OrderPlacedSchema, {
          orderId: id,
          userId: caller.userId,
          lines: priced.lines.map((l) => lineToProto(priced.currency, l)),
          total: money(priced.currency, priced.totalMinor),
          occurTime: timestampNow(),
        }),
        id,
        deps.subjectPrefix,
      );
      // One statement: order, lines, saga row (leased to this process, so the kick
      // below runs it without a claim) and the OrderPlaced outbox row, or nothing;
      // maybe shared with concurrent PlaceOrders (place-batch.ts).
      const inserted = await inserter.insert({
        id,
        userId: caller.userId,
        idempotencyKey: input.idempotencyKey,
        currency: priced.currency,
        totalMinor: priced.totalMinor,
        lines: priced.lines,
        paymentToken: input.paymentToken,
        leaseToken,
        leaseMs: saga.leaseMs,
        deadlineMs: deps.sagaDeadlineMs,
        event,
      });

      if (!inserted) {
        // The key was used before (or a concurrent request with it won, in this batch or another): answer the first order.
        const first = await findByKey(db, caller.userId, input.idempotencyKey);
        if (!first) throw new ConnectError('the first order with this idempotency_key vanished', Code.Aborted);
        return { order: first };
      }
      const subject: SagaSubject = {
        orderId: id,
        userId: caller.userId,
        currency: priced.currency,
        totalMinor: priced.totalMinor,
        lines: priced.lines.map((l) => ({ sku: l.sku, quantity: l.quantity })),
        paymentToken: input.paymentToken,
        step: 'reserve',
        attempt: 0,
        deadlineAt: inserted.deadlineAt,
        cancelReason: null,
        placedAt: inserted.createTime,
        orderStatus: 'PENDING',
      };
      const row: OrderRow = {
        id,
        seq: inserted.seq,
        userId: caller.userId,
        idempotencyKey: input.idempotencyKey,
        status: 'PENDING',
        currency: priced.currency,
        totalMinor: priced.totalMinor,
        cancelReason: '',
        createTime: inserted.createTime,
        updateTime: inserted.updateTime,
      };
      const order = orderToProto(row, priced.lines);
      // Announced before the saga starts, so a WatchMyOrders stream hears PENDING before any later status.
      changes.placed(caller.userId, order);
      void saga.kick(id, leaseToken, subject);
      return { order };
    },

    async getOrder(req, ctx) {
      const caller = requireUser(ctx);
      return { order: await getOwnOrder(db, validateId(req.id), caller.userId) };
    },

    async listOrders(req, ctx) {
      const caller = requireUser(ctx);
      const limit = pageSize(req.pageSize);
      const cursor = decodePageToken(req.pageToken);
      const status = req.status === 0 ? undefined : statusFromProto(req.status);
      if (req.status !== 0 && !status) throw invalidArgument('status', `unknown status ${req.status}`, 'UNKNOWN_ENUM');
      const rows = await listOrders(db, { userId: caller.userId, status, beforeSeq: cursor?.seq, limit: limit + 1 });
      const page = rows.slice(0, limit);
      const last = page.at(-1);
      return {
        orders: page.map((o) => orderToProto(o.row, o.lines)),
        nextPageToken: rows.length > limit && last ? encodePageToken({ seq: last.row.seq }) : '',
      };
    },

    /**
     * Allowed while the saga is reserving or authorizing. It takes the saga
     * over for compensation and waits (within the call's deadline) for it to
     * finish, so the answer is normally the CANCELLED order; if a downstream
     * service is down, the compensation keeps retrying in the background and
     * the answer is the order as it is (PENDING).
     */
    async cancelOrder(req, ctx) {
      const caller = requireUser(ctx);
      const id = validateId(req.id);
      const reason = cancelReason(req.reason);
      const decision = await saga.requestCancel(id, caller.userId, reason);
      switch (decision.kind) {
        case 'not_found':
          throw notFound(ORDER, id, `order ${id} not found`);
        case 'final':
          if (decision.status === 'CONFIRMED') {
            throw failedPrecondition('ORDER_STATUS', `orders/${id}`, 'the order is confirmed; it can no longer be cancelled');
          }
          break;
        case 'confirming':
          throw failedPrecondition('ORDER_STATUS', `orders/${id}`, 'the order is being confirmed; it can no longer be cancelled');
        case 'compensating':
          await withinDeadline(saga.settled(id), ctx.timeoutMs());
          break;
        case 'compensate':
          await withinDeadline(saga.kick(id, decision.leaseToken), ctx.timeoutMs());
          break;
      }
      return { order: await getOwnOrder(db, id, caller.userId) };
    },

    /**
     * One stream per shopper: the open orders, `synced`, then each order as it is placed or
     * changes. Subscribed before the first read, so nothing between the read and the wait
     * is missed (an order both read and announced is sent once: a message goes out only when
     * its status differs from the last one sent). What the saga or PlaceOrder here does is
     * heard at once; what another replica does, on the next re-read (every watchPollMs, shared
     * by the process's streams: watch-reread.ts) of the open orders and of the ones that left that list.
     */
    async *watchMyOrders(_req, ctx) {
      const caller = requireUser(ctx);
      const heard: UserOrderChange[] = [];
      let wake: (() => void) | undefined;
      const unsubscribe = changes.subscribeUser(caller.userId, (change) => {
        heard.push(change);
        wake?.();
      });
      // The last state sent of each order: a state heard from two places goes out once.
      const sent = new SentOrders(isFinalProto, Math.max(60_000, 10 * watchPollMs));
      try {
        for (const order of (await rereader.reread({ userId: caller.userId, knownOpen: [] })).open) {
          if (sent.next(order)) yield { event: { case: 'order', value: order } };
        }
        yield { event: { case: 'synced', value: true } };
        // On the process's shared beat, so that the streams' re-reads go out together (watch-reread.ts).
        let nextRead = nextRereadAt(Date.now(), watchPollMs);
        while (!ctx.signal.aborted) {
          const readIn = nextRead - Date.now();
          if (heard.length === 0 && readIn > 0) await sleepUntilWoken(readIn, ctx.signal, (w) => (wake = w));
          wake = undefined;
          if (ctx.signal.aborted) return;
          const batch = heard.splice(0);
          const now: Order[] = [];
          for (const c of batch) {
            if ('placed' in c) now.push(c.placed);
            else {
              // Known here (placed or read earlier): apply the change; else read the order.
              const base = sent.get(c.orderId) ?? (await loadOwnOrder(db, c.orderId, caller.userId));
              if (base) now.push(withChange(base, c.change));
            }
          }
          // Every watchPollMs, busy or not: what other replicas did. Orders that left the open
          // list went final: they come back as they are now.
          if (Date.now() >= nextRead) {
            const { open, left } = await rereader.reread({ userId: caller.userId, knownOpen: sent.openIds() });
            nextRead = nextRereadAt(Date.now(), watchPollMs);
            now.push(...open, ...left);
          }
          for (const order of now) {
            if (sent.next(order)) yield { event: { case: 'order', value: order } };
          }
        }
      } finally {
        unsubscribe();
      }
    },

    /**
     * The current state first, then each change. A change made by this
     * process's saga is heard at once (OrderChanges); one made by another
     * replica is seen by the periodic re-read.
     */
    async *watchOrder(req, ctx) {
      const caller = requireUser(ctx);
      const id = validateId(req.id);
      // Subscribed before the first read, so a change between the read and the wait is not missed.
      let pending: { change: OrderChange | undefined } | undefined;
      let wake: (() => void) | undefined;
      const unsubscribe = changes.subscribe(id, (change) => {
        pending = { change };
        wake?.();
      });
      try {
        let last = await getOwnOrder(db, id, caller.userId);
        yield { order: last };
        while (!isFinalProto(last) && !ctx.signal.aborted) {
          if (!pending) await sleepUntilWoken(watchPollMs, ctx.signal, (w) => (wake = w));
          wake = undefined;
          if (ctx.signal.aborted) return;
          const got = pending;
          pending = undefined;
          // The saga told us what changed: apply it to what we have. Otherwise (timer), re-read.
          const now = got?.change ? withChange(last, got.change) : await getOwnOrder(db, id, caller.userId);
          if (now.status !== last.status || now.cancelReason !== last.cancelReason) {
            last = now;
            yield { order: now };
          }
        }
      } finally {
        unsubscribe();
      }
    },
  };
}

/** Resolves after `ms`, on abort, or when the function handed to `onWake` is called. */
function sleepUntilWoken(ms: number, signal: AbortSignal, onWake: (wake: () => void) => void): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    onWake(done);
  });
}

function withChange(order: Order, change: OrderChange): Order {
  return create(OrderSchema, {
    ...order,
    status: STATUS_TO_PROTO[change.status],
    cancelReason: change.cancelReason,
    updateTime: timestampFromDate(change.updateTime),
  });
}

function isFinalProto(order: Order): boolean {
  const status = statusFromProto(order.status);
  return status !== undefined && isFinal(status);
}

function validateId(id: string): string {
  if (id === '') throw invalidArgument('id', 'is required', 'REQUIRED');
  if (!UUID.test(id)) throw invalidArgument('id', 'must be an order id (UUID)', 'MALFORMED');
  return id.toLowerCase();
}

/** The caller's order, or undefined when it is not theirs or not there. */
async function loadOwnOrder(db: Database, id: string, userId: string): Promise<Order | undefined> {
  const found = await loadOrder(db, id, userId);
  return found ? orderToProto(found.row, found.lines) : undefined;
}

async function getOwnOrder(db: Database, id: string, userId: string): Promise<Order> {
  const found = await loadOrder(db, id, userId);
  // Another user's order is indistinguishable from a missing one.
  if (!found) throw notFound(ORDER, id, `order ${id} not found`);
  return orderToProto(found.row, found.lines);
}

async function findByKey(db: Database, userId: string, key: string): Promise<Order | undefined> {
  const [row] = await db
    .select()
    .from(orders)
    .where(and(eq(orders.userId, userId), eq(orders.idempotencyKey, key)))
    .limit(1);
  if (!row) return undefined;
  return orderToProto(row, (await linesOf(db, [row.id])).get(row.id) ?? []);
}

/**
 * Prices the lines through the catalog (one lookup, maybe sharing a
 * BatchGetProducts with other orders). The catalog's own INVALID_ARGUMENT
 * about `skus[i]` is about our `lines[i].sku` (we send the SKUs in line
 * order), so the caller hears about the field it sent.
 */
async function price(catalog: CatalogPrices, lines: LineInput[]): Promise<PricedOrder> {
  let res;
  try {
    res = await catalog.lookup(lines.map((l) => l.sku));
  } catch (err) {
    const e = ConnectError.from(err);
    if (e.code === Code.InvalidArgument) {
      const v = fieldViolations(e);
      if (v.length > 0) {
        throw invalidArguments(v.map((x) => ({ ...x, field: x.field.replace(/^skus\[(\d+)\]$/, 'lines[$1].sku') })));
      }
      throw invalidArgument('lines', e.rawMessage);
    }
    // Unavailable, deadline, cancelled: the caller may retry (PlaceOrder is idempotent).
    if ([Code.Unavailable, Code.DeadlineExceeded, Code.Canceled, Code.ResourceExhausted].includes(e.code)) throw e;
    throw new ConnectError(`catalog could not price the order: ${e.rawMessage}`, Code.Internal);
  }
  const prices: CatalogPrice[] = res.products.map((p) => ({
    sku: p.sku,
    name: p.name,
    currency: p.price?.currencyCode ?? '',
    unitPriceMinor: p.price?.amountMinor ?? 0n,
  }));
  return priceOrder(lines, prices, res.missingSkus);
}

/** Waits for `p`, but no longer than the call's remaining time (less a margin to answer in). */
async function withinDeadline(p: Promise<void>, timeoutMs: number | undefined): Promise<void> {
  const budget = Math.max(0, (timeoutMs ?? 5000) - 250);
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise<void>((r) => (timer = setTimeout(r, budget)))]);
  clearTimeout(timer);
}
