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
import { eq, sql } from 'drizzle-orm';
import { resultRows, type Database, type Transaction } from '../../mesh/db.js';
import { rowFromDriver } from '../../mesh/events/db.js';
import { notFound } from '../../mesh/errors.js';
import { enqueueEvent, eventsEnqueued, outboxInsertSql } from '../../mesh/events/outbox.js';
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
import type { CardProcessor } from './processor.js';
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
      const now = new Date(this.now());
      const p: PaymentRecord = {
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
      const occurTime = timestampFromMs(now.getTime());
      const event = result.approved
        ? outboxInsertSql(
            outbox,
            PaymentAuthorizedSchema,
            create(PaymentAuthorizedSchema, {
              paymentId: p.id,
              orderId: p.orderId,
              userId: p.userId,
              amount: { currencyCode: p.currencyCode, amountMinor: p.amountMinor },
              occurTime,
            }),
            { aggregateId: p.orderId, prefix: this.prefix },
            sql`p`,
          )
        : outboxInsertSql(
            outbox,
            PaymentFailedSchema,
            create(PaymentFailedSchema, { paymentId: p.id, orderId: p.orderId, userId: p.userId, reason: p.declineReason, occurTime }),
            { aggregateId: p.orderId, prefix: this.prefix },
            sql`p`,
          );
      // The payment and its event in one statement (one round trip less), written out rather
      // than through drizzle's insert builder, which maps every column of every call.
      const insert = sql`insert into "payment"."payments" (id, order_id, user_id, amount_minor, currency_code, status,
          decline_reason, card_last4, authorization_code, refund_reason, create_time, update_time)
        values (${p.id}::uuid, ${p.orderId}, ${p.userId}, ${String(p.amountMinor)}::bigint, ${p.currencyCode}, ${p.status},
          ${p.declineReason}, ${p.cardLast4}, ${p.authorizationCode}, '', ${now.toISOString()}::timestamptz, ${now.toISOString()}::timestamptz)
        returning id`;
      await tx.execute(sql`with p as (${insert}), e as (${event}) select id from p`);
      await eventsEnqueued(tx, outbox);
      return p;
    });
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
