/**
 * The notification context's rules, with no I/O: which events make which
 * message (the title and body texts live here), and the paging rules of
 * ListNotifications (page size, the opaque page token).
 */
import type { FieldViolation } from '../../mesh/errors.js';
import { NotificationKind } from '../../gen/shop/notification/v1/notification_pb.js';

/** Kinds as stored in the database. */
export const KINDS = ['order_confirmed', 'order_cancelled', 'payment_failed'] as const;
export type KindName = (typeof KINDS)[number];

export function kindToProto(kind: KindName): NotificationKind {
  switch (kind) {
    case 'order_confirmed':
      return NotificationKind.ORDER_CONFIRMED;
    case 'order_cancelled':
      return NotificationKind.ORDER_CANCELLED;
    case 'payment_failed':
      return NotificationKind.PAYMENT_FAILED;
  }
}

export function isKindName(value: string): value is KindName {
  return (KINDS as readonly string[]).includes(value);
}

/** What the user reads. */
export interface MessageText {
  title: string;
  body: string;
}

/** Orders are shown by the first 8 characters of their id (a UUID), like a receipt number. */
export function shortOrderId(orderId: string): string {
  return orderId.slice(0, 8).toUpperCase();
}

/**
 * Minor-unit digits per currency code, as Intl knows them. Cached because
 * building an Intl.NumberFormat per notification was ~8 % of this process's
 * CPU under the orders bench; bounded since codes come from events.
 */
const digitsByCurrency = new Map<string, number>();
const DIGITS_CACHE_MAX = 256;

function fractionDigits(currencyCode: string): number {
  const known = digitsByCurrency.get(currencyCode);
  if (known !== undefined) return known;
  let digits = 2;
  try {
    digits = new Intl.NumberFormat('en', { style: 'currency', currency: currencyCode }).resolvedOptions()
      .maximumFractionDigits ?? 2;
  } catch {
    // Not a currency code Intl knows: show two decimals.
  }
  if (digitsByCurrency.size < DIGITS_CACHE_MAX) digitsByCurrency.set(currencyCode, digits);
  return digits;
}

/** "EUR 49.99": the currency's own number of decimals (ISO 4217 via Intl), code first so it reads the same everywhere. */
export function formatMoney(money: { currencyCode: string; amountMinor: bigint } | undefined): string | undefined {
  if (!money || money.currencyCode === '') return undefined;
  const digits = fractionDigits(money.currencyCode);
  const negative = money.amountMinor < 0n;
  const abs = negative ? -money.amountMinor : money.amountMinor;
  const scale = 10n ** BigInt(digits);
  const whole = (abs / scale).toString();
  const fraction = digits > 0 ? `.${(abs % scale).toString().padStart(digits, '0')}` : '';
  return `${money.currencyCode} ${negative ? '-' : ''}${whole}${fraction}`;
}

function sentence(text: string): string {
  const t = text.trim();
  return t === '' || /[.!?]$/.test(t) ? t : `${t}.`;
}

export function orderConfirmedText(e: { orderId: string; total?: { currencyCode: string; amountMinor: bigint } }): MessageText {
  const total = formatMoney(e.total);
  return {
    title: 'Order confirmed',
    body: `Your order ${shortOrderId(e.orderId)} is confirmed${total ? ` and ${total} has been charged` : ''}. Thank you for shopping with us!`,
  };
}

export function orderCancelledText(e: { orderId: string; reason: string }): MessageText {
  const reason = sentence(e.reason);
  return {
    title: 'Order cancelled',
    body: `Your order ${shortOrderId(e.orderId)} was cancelled${reason ? `: ${reason}` : '.'} You have not been charged for it.`,
  };
}

export function paymentFailedText(e: { orderId: string; reason: string }): MessageText {
  const reason = sentence(e.reason);
  return {
    title: 'Payment declined',
    body: `We could not take payment for order ${shortOrderId(e.orderId)}${reason ? `: ${reason}` : '.'} Please check your card details and order again.`,
  };
}

// ---- paging ---------------------------------------------------------------------

export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 100;

/** The page size to use: 20 when zero, capped at 100; negative is a violation. */
export function pageSize(requested: number): number | FieldViolation {
  if (requested < 0) return { field: 'page_size', description: 'must not be negative', reason: 'OUT_OF_RANGE' };
  if (requested === 0) return DEFAULT_PAGE_SIZE;
  return Math.min(requested, MAX_PAGE_SIZE);
}

/**
 * Page tokens are keyset cursors: the sequence number of the last
 * notification on the page, so new notifications arriving between pages
 * neither shift nor repeat entries. Encoded opaquely ("n1:<seq>" in base64url)
 * so callers do not build their own; the version tag lets the format change.
 */
const TOKEN_TAG = 'n1:';

export function encodePageToken(lastSeq: bigint): string {
  return Buffer.from(`${TOKEN_TAG}${lastSeq}`, 'utf8').toString('base64url');
}

/** The largest value of a Postgres bigint (the seq column). */
const INT64_MAX = 2n ** 63n - 1n;

/** The cursor in a token; undefined for an empty token (first page); a violation for a token we did not issue. */
export function decodePageToken(token: string): bigint | undefined | FieldViolation {
  if (token === '') return undefined;
  const bad: FieldViolation = { field: 'page_token', description: 'is not a token returned by this service', reason: 'INVALID_PAGE_TOKEN' };
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(token)) return bad;
  const text = Buffer.from(token, 'base64url').toString('utf8');
  if (!text.startsWith(TOKEN_TAG)) return bad;
  const digits = text.slice(TOKEN_TAG.length);
  // Nineteen digits can pass a bigint column's maximum, which Postgres refuses (22003): no
  // token this service issued holds such a seq.
  if (!/^[1-9]\d{0,18}$/.test(digits) || BigInt(digits) > INT64_MAX) return bad;
  return BigInt(digits);
}

export function isViolation(x: unknown): x is FieldViolation {
  return typeof x === 'object' && x !== null && 'field' in x && 'description' in x;
}
