import test from 'ava';
import { NotificationKind } from '../../gen/shop/notification/v1/notification_pb.js';
import {
  DEFAULT_PAGE_SIZE,
  MAX_PAGE_SIZE,
  decodePageToken,
  encodePageToken,
  formatMoney,
  isViolation,
  kindToProto,
  orderCancelledText,
  orderConfirmedText,
  pageSize,
  paymentFailedText,
} from './domain.js';

const orderId = '0f8fad5b-d9cb-469f-a165-70867728950e';

test('texts name the order and the reason', (t) => {
  const confirmed = orderConfirmedText({ orderId, total: { currencyCode: 'EUR', amountMinor: 4999n } });
  t.is(confirmed.title, 'Order confirmed');
  t.is(confirmed.body, 'Your order 0F8FAD5B is confirmed and EUR 49.99 has been charged. Thank you for shopping with us!');
  const cancelled = orderCancelledText({ orderId, reason: 'out of stock' });
  t.is(cancelled.title, 'Order cancelled');
  t.is(cancelled.body, 'Your order 0F8FAD5B was cancelled: out of stock. You have not been charged for it.');
  t.is(orderCancelledText({ orderId, reason: '' }).body, 'Your order 0F8FAD5B was cancelled. You have not been charged for it.');
  const failed = paymentFailedText({ orderId, reason: 'card declined' });
  t.is(failed.title, 'Payment declined');
  t.true(failed.body.includes('order 0F8FAD5B: card declined.'));
});

test('money is shown in the currency own decimals', (t) => {
  t.is(formatMoney({ currencyCode: 'EUR', amountMinor: 5n }), 'EUR 0.05');
  t.is(formatMoney({ currencyCode: 'JPY', amountMinor: 1200n }), 'JPY 1200');
  t.is(formatMoney({ currencyCode: 'KWD', amountMinor: 1500n }), 'KWD 1.500');
  t.is(formatMoney(undefined), undefined);
  // A second look answers from the cache of digits per currency, the same way.
  t.is(formatMoney({ currencyCode: 'KWD', amountMinor: 1500n }), 'KWD 1.500');
  t.is(formatMoney({ currencyCode: 'JPY', amountMinor: 7n }), 'JPY 7');
  t.is(formatMoney({ currencyCode: 'XYZ1', amountMinor: 1234n }), 'XYZ1 12.34');
  t.is(formatMoney({ currencyCode: 'XYZ1', amountMinor: 1234n }), 'XYZ1 12.34');
});

test('kinds map to the contract enum', (t) => {
  t.is(kindToProto('order_confirmed'), NotificationKind.ORDER_CONFIRMED);
  t.is(kindToProto('order_cancelled'), NotificationKind.ORDER_CANCELLED);
  t.is(kindToProto('payment_failed'), NotificationKind.PAYMENT_FAILED);
});

test('page size: default, cap, negative refused', (t) => {
  t.is(pageSize(0), DEFAULT_PAGE_SIZE);
  t.is(pageSize(7), 7);
  t.is(pageSize(1000), MAX_PAGE_SIZE);
  const bad = pageSize(-1);
  t.true(isViolation(bad));
  t.is(isViolation(bad) ? bad.field : '', 'page_size');
});

test('page tokens round-trip and foreign tokens are refused', (t) => {
  t.is(decodePageToken(''), undefined);
  t.is(decodePageToken(encodePageToken(42n)), 42n);
  const max = 2n ** 63n - 1n; // a bigint column's largest value
  t.is(decodePageToken(encodePageToken(max)), max);
  for (const bad of ['abc', '!!!', Buffer.from('n1:-3').toString('base64url'), Buffer.from('n1:0').toString('base64url'), 'x'.repeat(100), encodePageToken(max + 1n), encodePageToken(10n ** 19n - 1n)]) {
    const decoded = decodePageToken(bad);
    t.true(isViolation(decoded), bad);
  }
});
