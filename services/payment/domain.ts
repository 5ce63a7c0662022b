/**
 * Payment rules, with no I/O: what a valid request is, and what each call
 * does to a payment in each state. One payment per order id.
 *
 *   (none) --authorize--> AUTHORIZED --capture--> CAPTURED --refund--> REFUNDED
 *      |                     |
 *      |                     +--refund--> VOIDED (the hold is released, nothing was charged)
 *      +--authorize (declined)--> DECLINED
 *      +--refund--> TOMBSTONE (internal: never charged; never shown by GetPayment)
 *
 * - Authorize of an order that has a payment answers that payment (the first
 *   result, AUTHORIZED or DECLINED), so a retry never charges twice; with a
 *   different user or amount it is ALREADY_EXISTS. Of a TOMBSTONE it is
 *   FAILED_PRECONDITION (type ORDER_REFUNDED): the order was refunded
 *   (cancelled) before it was authorized, so a late authorization must not
 *   hold money for it. Not ABORTED, which gRPC clients (the order saga among
 *   them) retry: this answer never changes. Not a DECLINED payment either: that
 *   would announce PaymentFailed (and notify the user) for an order already cancelled.
 * - Capture of CAPTURED answers it; of anything but AUTHORIZED is FAILED_PRECONDITION.
 * - Refund of AUTHORIZED voids, of CAPTURED refunds, of VOIDED or REFUNDED
 *   answers it; of DECLINED or an unknown order answers no payment (nothing
 *   was charged); the unknown one leaves a TOMBSTONE.
 */
import { Code, ConnectError } from '@connectrpc/connect';
import { failedPrecondition, invalidArgument } from '../../mesh/errors.js';

export type PaymentState = 'AUTHORIZED' | 'CAPTURED' | 'DECLINED' | 'VOIDED' | 'REFUNDED' | 'TOMBSTONE';

/** Order ids are UUIDs, but any opaque token of this shape is accepted. */
export const ORDER_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
export const USER_ID_PATTERN = /^[A-Za-z0-9._:@-]{1,128}$/;
export const CARD_TOKEN_PATTERN = /^[A-Za-z0-9_]{4,64}$/;
export const CURRENCY_PATTERN = /^[A-Z]{3}$/;
export const MAX_REASON_LENGTH = 500;

export interface PaymentRecord {
  id: string;
  orderId: string;
  userId: string;
  amountMinor: bigint;
  currencyCode: string;
  status: PaymentState;
  declineReason: string;
  cardLast4: string;
  authorizationCode: string;
  createTime: Date;
  updateTime: Date;
}

export interface AuthorizeInput {
  orderId: string;
  userId: string;
  amountMinor: bigint;
  currencyCode: string;
  cardToken: string;
}

export function validateOrderId(orderId: string): void {
  if (orderId === '') throw invalidArgument('order_id', 'is required', 'REQUIRED');
  if (!ORDER_ID_PATTERN.test(orderId)) {
    throw invalidArgument('order_id', 'must be 1-128 characters of letters, digits and ._:-', 'PATTERN');
  }
}

export function validateReason(reason: string): void {
  if (reason.length > MAX_REASON_LENGTH) {
    throw invalidArgument('reason', `must be at most ${MAX_REASON_LENGTH} characters`, 'LENGTH');
  }
}

export function validateAuthorize(req: {
  orderId: string;
  userId: string;
  amount?: { currencyCode: string; amountMinor: bigint };
  cardToken: string;
}): AuthorizeInput {
  validateOrderId(req.orderId);
  if (req.userId === '') throw invalidArgument('user_id', 'is required', 'REQUIRED');
  if (!USER_ID_PATTERN.test(req.userId)) throw invalidArgument('user_id', 'must be 1-128 characters without spaces', 'PATTERN');
  if (!req.amount) throw invalidArgument('amount', 'is required', 'REQUIRED');
  if (!CURRENCY_PATTERN.test(req.amount.currencyCode)) {
    throw invalidArgument('amount.currency_code', 'must be three upper-case letters (ISO 4217)', 'PATTERN');
  }
  if (req.amount.amountMinor <= 0n) throw invalidArgument('amount.amount_minor', 'must be positive', 'RANGE');
  if (req.cardToken === '') throw invalidArgument('card_token', 'is required', 'REQUIRED');
  if (!CARD_TOKEN_PATTERN.test(req.cardToken)) {
    throw invalidArgument('card_token', 'must be 4-64 characters of letters, digits and _', 'PATTERN');
  }
  return {
    orderId: req.orderId,
    userId: req.userId,
    amountMinor: req.amount.amountMinor,
    currencyCode: req.amount.currencyCode,
    cardToken: req.cardToken,
  };
}

/** The last four characters of the card token ("visa" for tok_visa). */
export function cardLast4(token: string): string {
  return token.slice(-4);
}

/** The answer to an AuthorizePayment for an order that already has a payment row. */
export function answerRepeatedAuthorize(existing: PaymentRecord, req: AuthorizeInput): PaymentRecord {
  if (existing.status === 'TOMBSTONE') {
    throw failedPrecondition(
      'ORDER_REFUNDED',
      `order ${existing.orderId}`,
      'was refunded before it was authorized; it cannot be charged',
    );
  }
  if (
    existing.userId !== req.userId ||
    existing.amountMinor !== req.amountMinor ||
    existing.currencyCode !== req.currencyCode
  ) {
    throw new ConnectError(
      `order ${existing.orderId} already has a payment for another user or amount; an order is paid once`,
      Code.AlreadyExists,
    );
  }
  return existing;
}

export function captureDecision(p: PaymentRecord): 'capture' | 'already' {
  switch (p.status) {
    case 'AUTHORIZED':
      return 'capture';
    case 'CAPTURED':
      return 'already';
    case 'TOMBSTONE':
      throw failedPrecondition('PAYMENT_STATE', `order ${p.orderId}`, 'was refunded before it was authorized; nothing to capture');
    default:
      throw failedPrecondition('PAYMENT_STATE', `order ${p.orderId}`, `payment is ${p.status}; only AUTHORIZED can be captured`);
  }
}

export type RefundDecision = 'void' | 'refund' | 'already' | 'nothing';

export function refundDecision(p: PaymentRecord): RefundDecision {
  switch (p.status) {
    case 'AUTHORIZED':
      return 'void';
    case 'CAPTURED':
      return 'refund';
    case 'VOIDED':
    case 'REFUNDED':
      return 'already';
    case 'DECLINED':
    case 'TOMBSTONE':
      return 'nothing';
  }
}

/** Whether `caller` may read `p`: its payer, or an admin. Anyone else is told it does not exist. */
export function visibleTo(p: PaymentRecord, caller: { userId: string; role: string }): boolean {
  return p.status !== 'TOMBSTONE' && (p.userId === caller.userId || caller.role === 'admin');
}
