/**
 * PaymentService: card payments through a processor (processor.ts documents
 * the simulated one's test tokens). One payment per order id.
 *
 * Answers, in one list:
 *   AuthorizePayment   AUTHORIZED, or DECLINED (a normal answer, with PaymentFailed);
 *                      a repeat answers the first result.
 *                      UNAVAILABLE when the processor is down (tok_error): nothing recorded, retry.
 *                      FAILED_PRECONDITION (detail type ORDER_REFUNDED) when the order was refunded
 *                      before it was authorized (tombstone): refused for good, nothing held.
 *                      ALREADY_EXISTS when the order has a payment for another user or amount.
 *   CapturePayment     CAPTURED; NOT_FOUND for an order without payment;
 *                      FAILED_PRECONDITION unless AUTHORIZED (or already CAPTURED).
 *   RefundPayment      VOIDED (was AUTHORIZED), REFUNDED (was CAPTURED), or no payment when
 *                      nothing was ever charged (DECLINED, or unknown: a tombstone is recorded).
 *   GetPayment         the caller's own payment (admins: any); another user's or none: NOT_FOUND.
 *   INVALID_ARGUMENT   a malformed field, named (order_id, user_id, amount, amount.currency_code,
 *                      amount.amount_minor, card_token, reason).
 *
 * BatchAuthorizePayments and BatchCapturePayments answer each request with what
 * AuthorizePayment / CapturePayment would have (response, or one of the errors above as
 * its Status, fields named "requests[i]..."), in one transaction for the batch; the call
 * itself fails only for INVALID_ARGUMENT on `requests` (none or over 100) or an internal error.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { ServiceImpl } from '@connectrpc/connect';
import {
  AuthorizePaymentResponseSchema,
  BatchAuthorizePaymentsResponseSchema,
  BatchCapturePaymentsResponseSchema,
  CapturePaymentResponseSchema,
  GetPaymentResponseSchema,
  PaymentSchema,
  PaymentService,
  PaymentStatus,
  RefundPaymentResponseSchema,
  type Payment,
} from '../../gen/shop/payment/v1/payment_pb.js';
import { answerItem, checkBatchSize, passes } from '../../mesh/batch-items.js';
import { notFound } from '../../mesh/errors.js';
import { requireUser } from '../../mesh/identity.js';
import { validateAuthorize, validateOrderId, validateReason, visibleTo, type PaymentRecord } from './domain.js';
import type { PaymentStore } from './store.js';

export function paymentService(store: PaymentStore): ServiceImpl<typeof PaymentService> {
  return {
    async authorizePayment(req, ctx) {
      const input = validateAuthorize(req);
      return create(AuthorizePaymentResponseSchema, { payment: payment(await store.authorize(input, ctx.signal)) });
    },

    async capturePayment(req) {
      validateOrderId(req.orderId);
      return create(CapturePaymentResponseSchema, { payment: payment(await store.capture(req.orderId)) });
    },

    async batchAuthorizePayments(req, ctx) {
      checkBatchSize(req.requests);
      const inputs = req.requests.map((r) => (passes(() => validateAuthorize(r)) ? validateAuthorize(r) : undefined));
      const valid = inputs.filter((i) => i !== undefined);
      const outcomes = valid.length > 0 ? await store.authorizeMany(valid, ctx.signal) : [];
      const byInput = new Map(valid.map((input, k) => [input, outcomes[k]!]));
      const results = await Promise.all(
        req.requests.map((r, i) =>
          answerItem(i, async () => {
            const input = inputs[i] ?? validateAuthorize(r); // an invalid one throws its own error again, indexed
            const outcome = byInput.get(input)!;
            if (outcome instanceof Error) throw outcome;
            return create(AuthorizePaymentResponseSchema, { payment: payment(outcome) });
          }),
        ),
      );
      return create(BatchAuthorizePaymentsResponseSchema, { results: results.map((result) => ({ result })) });
    },

    async batchCapturePayments(req) {
      checkBatchSize(req.requests);
      const valid = req.requests.filter((r) => passes(() => validateOrderId(r.orderId))).map((r) => r.orderId);
      const outcomes = valid.length > 0 ? await store.captureMany(valid) : [];
      const byOrder = new Map(valid.map((orderId, k) => [orderId, outcomes[k]!]));
      const results = await Promise.all(
        req.requests.map((r, i) =>
          answerItem(i, async () => {
            validateOrderId(r.orderId);
            const outcome = byOrder.get(r.orderId)!;
            if (outcome instanceof Error) throw outcome;
            return create(CapturePaymentResponseSchema, { payment: payment(outcome) });
          }),
        ),
      );
      return create(BatchCapturePaymentsResponseSchema, { results: results.map((result) => ({ result })) });
    },

    async refundPayment(req) {
      validateOrderId(req.orderId);
      validateReason(req.reason);
      const refunded = await store.refund(req.orderId, req.reason);
      return create(RefundPaymentResponseSchema, { payment: refunded && payment(refunded) });
    },

    async getPayment(req, ctx) {
      const caller = requireUser(ctx);
      validateOrderId(req.orderId);
      const found = await store.find(req.orderId);
      // Someone else's payment is reported exactly like a missing one: no probing for order ids.
      if (!found || !visibleTo(found, caller)) throw notFound('payment', req.orderId, `order ${req.orderId} has no payment`);
      return create(GetPaymentResponseSchema, { payment: payment(found) });
    },
  };
}

const STATUS: Record<Exclude<PaymentRecord['status'], 'TOMBSTONE'>, PaymentStatus> = {
  AUTHORIZED: PaymentStatus.AUTHORIZED,
  CAPTURED: PaymentStatus.CAPTURED,
  DECLINED: PaymentStatus.DECLINED,
  VOIDED: PaymentStatus.VOIDED,
  REFUNDED: PaymentStatus.REFUNDED,
};

function payment(p: PaymentRecord): Payment {
  return create(PaymentSchema, {
    id: p.id,
    orderId: p.orderId,
    userId: p.userId,
    amount: { currencyCode: p.currencyCode, amountMinor: p.amountMinor },
    status: p.status === 'TOMBSTONE' ? PaymentStatus.UNSPECIFIED : STATUS[p.status],
    declineReason: p.declineReason,
    cardLast4: p.cardLast4,
    createTime: timestampFromDate(p.createTime),
    updateTime: timestampFromDate(p.updateTime),
  });
}
