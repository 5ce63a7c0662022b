/**
 * The payment context's transactions, one per call, with the processor call
 * inside it.
 *
 * Why a retried or concurrent AuthorizePayment charges once: every call for
 * an order first takes a transaction-scoped advisory lock on the order id, so
 * calls for one order run one after the other (calls for different orders do
 * not wait on each other). The first finds no payment, asks the processor and
 * stores the answer with its event; the next ones find that row and answer it.
 * If the processor fails (UNAVAILABLE) or the process dies mid-call, the
 * transaction rolls back and the lock is released: nothing is recorded and a
 * retry starts afresh (the processor is called with the order id as its
 * idempotency key, so a hold it made before an answer was lost is the same
 * hold). The unique index on order_id backs this up.
 *
 * The lock is held for the length of the processor call (PAYMENT_SLOW_MS for
 * tok_slow), which costs one pooled connection per in-flight authorization.
 */
import { randomUUID } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { ConnectError } from '@connectrpc/connect';
import { eq, sql } from 'drizzle-orm';
import { resultRows, type Database, type Transaction } from '../../mesh/db.js';
import { rowFromDriver } from '../../mesh/events/db.js';
import { notFound } from '../../mesh/errors.js';
import { enqueueEvent, eventsEnqueued, outboxEvent, outboxInsertManySql } from '../../mesh/events/outbox.js';
import {
  PaymentAuthorizedSchema,
  PaymentFailedSchema,
  PaymentRefundedSchema,
} from '../../gen/shop/payment/v1/payment_pb.js';
import {
  answerRepeatedAuthorize,
  captureDecision,
  cardLast4,
  refundDecision,
  type AuthorizeInput,
  type PaymentRecord,
} from './domain.js';
import type { AuthorizeResult, CardProcessor } from './processor.js';
import { outbox, payments, type PaymentRow } from './schema.js';

export interface PaymentStoreOptions {
  db: Database;
  processor: CardProcessor;
  /** NATS_SUBJECT_PREFIX: written into the outbox subject. */
  subjectPrefix?: string;
  now?: () => number;
}

export class PaymentStore {
  private readonly db: Database;
  private readonly processor: CardProcessor;
  private readonly prefix: string;
  private readonly now: () => number;

  constructor(options: PaymentStoreOptions) {
    this.db = options.db;
    this.processor = options.processor;
    this.prefix = options.subjectPrefix ?? '';
    this.now = options.now ?? Date.now;
  }

  /** The payment of an order, tombstones included (the caller decides what to show). */
  async find(orderId: string): Promise<PaymentRecord | undefined> {
    const [row] = await this.db.select().from(payments).where(eq(payments.orderId, orderId));
    return row && record(row);
  }

  /** Authorizes once per order: AUTHORIZED (PaymentAuthorized) or DECLINED (PaymentFailed). */
  async authorize(req: AuthorizeInput, signal?: AbortSignal): Promise<PaymentRecord> {
    return this.db.transaction(async (tx) => {
      const existing = await this.lockOrder(tx, req.orderId);
      if (existing) return answerRepeatedAuthorize(existing, req);

      const result = await this.processor.authorize(
        { idempotencyKey: req.orderId, cardToken: req.cardToken, amountMinor: req.amountMinor, currencyCode: req.currencyCode },
        signal,
      );
      const p = newPayment(req, result, new Date(this.now()));
      await this.insertWithEvents(tx, [p]);
      return p;
    });
  }

  /**
   * AuthorizePayment for several requests in one transaction, each answered as authorize()
   * would (its payment, or the error it would throw; results in request order): the order
   * ids are locked and their payments read in one round trip, the processor is asked for
   * every order without a payment (at once; an order's repeats in the batch wait for its
   * first request and then answer like retries), and the new payments and their events are
   * written in one statement. A processor outage for one card is that request's
   * UNAVAILABLE: nothing is written for it. Anything else that fails (the database) fails
   * the whole batch, which rolls back: nothing was recorded, every request may be retried.
   */
  async authorizeMany(reqs: AuthorizeInput[], signal?: AbortSignal): Promise<(PaymentRecord | Error)[]> {
    return this.db.transaction(async (tx) => {
      const known = await this.lockOrders(tx, reqs.map((r) => r.orderId));
      const created: PaymentRecord[] = [];
      const answers: (PaymentRecord | Error)[] = new Array(reqs.length);
      const byOrder = new Map<string, number[]>();
      reqs.forEach((r, i) => byOrder.set(r.orderId, [...(byOrder.get(r.orderId) ?? []), i]));
      await Promise.all(
        [...byOrder.values()].map(async (indexes) => {
          for (const i of indexes) {
            const req = reqs[i]!;
            try {
              const existing = known.get(req.orderId);
              if (existing) {
                answers[i] = answerRepeatedAuthorize(existing, req);
                continue;
              }
              const result = await this.processor.authorize(
                { idempotencyKey: req.orderId, cardToken: req.cardToken, amountMinor: req.amountMinor, currencyCode: req.currencyCode },
                signal,
              );
              const p = newPayment(req, result, new Date(this.now()));
              known.set(req.orderId, p);
              created.push(p);
              answers[i] = p;
            } catch (err) {
              if (!(err instanceof ConnectError)) throw err;
              answers[i] = err;
            }
          }
        }),
      );
      if (created.length > 0) await this.insertWithEvents(tx, created);
      return answers;
    });
  }

  /**
   * New payments and their events (PaymentAuthorized or PaymentFailed) in one statement,
   * written out rather than through drizzle's insert builder, which maps every column of
   * every call; then the relay's wake-up. One statement text for any number of payments:
   * the rows travel as jsonb (jsonb_to_recordset keeps their order), not as a `values`
   * row per payment, because statements are prepared per text and connection
   * (mesh/db-prepared.ts) and each batch size would be a text planned anew.
   */
  private async insertWithEvents(tx: Transaction, created: PaymentRecord[]): Promise<void> {
    const rows = created.map((p) => ({
      id: p.id,
      order_id: p.orderId,
      user_id: p.userId,
      amount_minor: String(p.amountMinor),
      currency_code: p.currencyCode,
      status: p.status,
      decline_reason: p.declineReason,
      card_last4: p.cardLast4,
      authorization_code: p.authorizationCode,
      create_time: p.createTime.toISOString(),
      update_time: p.updateTime.toISOString(),
    }));
    const insert = sql`insert into "payment"."payments" (id, order_id, user_id, amount_minor, currency_code, status,
        decline_reason, card_last4, authorization_code, refund_reason, create_time, update_time)
      select x.id, x.order_id, x.user_id, x.amount_minor, x.currency_code, x.status,
        x.decline_reason, x.card_last4, x.authorization_code, '', x.create_time, x.update_time
      from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb) as x(id uuid, order_id text, user_id text, amount_minor bigint,
        currency_code text, status text, decline_reason text, card_last4 text, authorization_code text,
        create_time timestamptz, update_time timestamptz)
      returning id`;
    // One event per payment (an insert in WITH runs once whether read or not).
    const events = outboxInsertManySql(outbox, created.map((p) => this.event(p)));
    await tx.execute(sql`with p as (${insert}), e as (${events}) select count(*) from p`);
    await eventsEnqueued(tx, outbox);
  }

  /** The outbox row of a new payment's event: PaymentAuthorized, or PaymentFailed for a decline. */
  private event(p: PaymentRecord) {
    const occurTime = timestampFromMs(p.createTime.getTime());
    const opts = { aggregateId: p.orderId, prefix: this.prefix };
    return p.status === 'AUTHORIZED'
      ? outboxEvent(
          PaymentAuthorizedSchema,
          create(PaymentAuthorizedSchema, {
            paymentId: p.id,
            orderId: p.orderId,
            userId: p.userId,
            amount: { currencyCode: p.currencyCode, amountMinor: p.amountMinor },
            occurTime,
          }),
          opts,
        )
      : outboxEvent(
          PaymentFailedSchema,
          create(PaymentFailedSchema, { paymentId: p.id, orderId: p.orderId, userId: p.userId, reason: p.declineReason, occurTime }),
          opts,
        );
  }

  /** Charges an AUTHORIZED payment; a CAPTURED one is answered as it is. */
  async capture(orderId: string): Promise<PaymentRecord> {
    return this.db.transaction(async (tx) => {
      const existing = await this.lockOrder(tx, orderId);
      if (!existing) throw notFound('payment', orderId, `order ${orderId} has no payment`);
      if (captureDecision(existing) === 'already') return existing;
      await this.processor.capture(orderId, existing.authorizationCode);
      return this.setStatus(tx, orderId, { status: 'CAPTURED' });
    });
  }

  /**
   * CapturePayment for several orders in one transaction, each answered as capture() would
   * (results in request order; a repeated order id answers the same): lock and read all in
   * one round trip, ask the processor to capture every AUTHORIZED one (at once; a failure
   * is that order's error and leaves it AUTHORIZED), mark the captured ones in one statement.
   */
  async captureMany(orderIds: string[]): Promise<(PaymentRecord | Error)[]> {
    return this.db.transaction(async (tx) => {
      const known = await this.lockOrders(tx, orderIds);
      const outcome = new Map<string, PaymentRecord | Error>();
      const toMark: string[] = [];
      await Promise.all(
        [...new Set(orderIds)].map(async (orderId) => {
          try {
            const existing = known.get(orderId);
            if (!existing) throw notFound('payment', orderId, `order ${orderId} has no payment`);
            if (captureDecision(existing) === 'already') return outcome.set(orderId, existing);
            await this.processor.capture(orderId, existing.authorizationCode);
            toMark.push(orderId);
          } catch (err) {
            if (!(err instanceof ConnectError)) throw err;
            outcome.set(orderId, err);
          }
        }),
      );
      if (toMark.length > 0) {
        // = any(the ids as jsonb), not in ($1, ..., $n): one statement text for any number of orders.
        const rows = resultRows<Record<string, unknown>>(
          await tx.execute(sql`update "payment"."payments" set status = 'CAPTURED',
              update_time = ${new Date(this.now()).toISOString()}::timestamptz
            where order_id = any(array(select jsonb_array_elements_text(${JSON.stringify(toMark)}::jsonb))) returning *`),
        );
        for (const row of rows) {
          const p = record(rowFromDriver(payments, row));
          outcome.set(p.orderId, p);
        }
      }
      return orderIds.map((id) => outcome.get(id)!);
    });
  }

  /**
   * Voids an AUTHORIZED payment or refunds a CAPTURED one (PaymentRefunded).
   * Answers undefined when nothing was ever charged (DECLINED, or no payment:
   * then a TOMBSTONE is recorded so a late AuthorizePayment is refused).
   */
  async refund(orderId: string, reason: string): Promise<PaymentRecord | undefined> {
    return this.db.transaction(async (tx) => {
      const existing = await this.lockOrder(tx, orderId);
      const now = new Date(this.now());
      if (!existing) {
        await tx.insert(payments).values({
          orderId,
          userId: '',
          amountMinor: 0n,
          currencyCode: '',
          status: 'TOMBSTONE',
          refundReason: reason || 'refunded before authorized',
          createTime: now,
          updateTime: now,
        });
        return undefined;
      }
      const decision = refundDecision(existing);
      if (decision === 'nothing') return undefined;
      if (decision === 'already') return existing;
      if (decision === 'void') await this.processor.void(orderId, existing.authorizationCode);
      else await this.processor.refund(orderId, existing.authorizationCode, existing.amountMinor);
      const p = await this.setStatus(tx, orderId, {
        status: decision === 'void' ? 'VOIDED' : 'REFUNDED',
        refundReason: reason,
      });
      await this.announce(
        tx,
        PaymentRefundedSchema,
        create(PaymentRefundedSchema, {
          paymentId: p.id,
          orderId: p.orderId,
          userId: p.userId,
          amount: { currencyCode: p.currencyCode, amountMinor: p.amountMinor },
          reason,
          occurTime: timestampFromMs(now.getTime()),
        }),
        p.orderId,
      );
      return p;
    });
  }

  /**
   * Serialises every call for one order (see the header), then reads its
   * payment: one round trip, through payment.lock_order (migration 0001),
   * which takes the lock before its select's snapshot. The lock is a 64-bit
   * hash of the order id: a collision only makes two orders wait for each
   * other, it never mixes them up.
   */
  private async lockOrder(tx: Transaction, orderId: string): Promise<PaymentRecord | undefined> {
    const [row] = resultRows<Record<string, unknown>>(await tx.execute(sql`select * from payment.lock_order(${orderId})`));
    return row && record(rowFromDriver(payments, row));
  }

  /**
   * lockOrder for several orders in one round trip: the locks are taken in the order of
   * their keys (two batches sharing orders never deadlock; a single call takes one lock),
   * each read after its lock as lockOrder's. Answers the payments found, by order id.
   */
  private async lockOrders(tx: Transaction, orderIds: string[]): Promise<Map<string, PaymentRecord>> {
    // The ids as one jsonb parameter, not `values ($1), ($2), ...`: one statement text for any
    // number of orders (statements are prepared per text and connection, mesh/db-prepared.ts).
    const ids = JSON.stringify([...new Set(orderIds)]);
    const rows = resultRows<Record<string, unknown>>(
      await tx.execute(sql`select p.* from
          (select id from jsonb_array_elements_text(${ids}::jsonb) as v(id) order by hashtextextended('payment:' || id, 0)) as u
          cross join lateral payment.lock_order(u.id) as p`),
    );
    return new Map(rows.map((row) => {
      const p = record(rowFromDriver(payments, row));
      return [p.orderId, p];
    }));
  }

  private async setStatus(
    tx: Transaction,
    orderId: string,
    change: Pick<Partial<PaymentRow>, 'status' | 'refundReason'>,
  ): Promise<PaymentRecord> {
    // Written out (see authorize): the status, and the refund reason when there is one.
    const [row] = resultRows<Record<string, unknown>>(
      await tx.execute(sql`update "payment"."payments" set status = ${change.status},
          refund_reason = coalesce(${change.refundReason ?? null}::text, refund_reason),
          update_time = ${new Date(this.now()).toISOString()}::timestamptz
        where order_id = ${orderId} returning *`),
    );
    return record(rowFromDriver(payments, row!));
  }

  private announce<Desc extends Parameters<typeof enqueueEvent>[2]>(
    tx: Transaction,
    schema: Desc,
    message: Parameters<typeof enqueueEvent<Desc>>[3],
    orderId: string,
  ): Promise<string> {
    return enqueueEvent(tx, outbox, schema, message, { aggregateId: orderId, prefix: this.prefix });
  }
}

/** The payment an authorization leaves: AUTHORIZED with its code, or DECLINED with the reason. */
function newPayment(req: AuthorizeInput, result: AuthorizeResult, now: Date): PaymentRecord {
  return {
    id: randomUUID(),
    orderId: req.orderId,
    userId: req.userId,
    amountMinor: req.amountMinor,
    currencyCode: req.currencyCode,
    status: result.approved ? 'AUTHORIZED' : 'DECLINED',
    declineReason: result.approved ? '' : result.declineReason,
    authorizationCode: result.approved ? result.authorizationCode : '',
    cardLast4: cardLast4(req.cardToken),
    createTime: now,
    updateTime: now,
  };
}

function record(row: PaymentRow): PaymentRecord {
  return {
    id: row.id,
    orderId: row.orderId,
    userId: row.userId,
    amountMinor: row.amountMinor,
    currencyCode: row.currencyCode,
    status: row.status,
    declineReason: row.declineReason,
    cardLast4: row.cardLast4,
    authorizationCode: row.authorizationCode,
    createTime: row.createTime,
    updateTime: row.updateTime,
  };
}
