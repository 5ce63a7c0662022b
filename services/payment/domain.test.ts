import test from 'ava';
import { Code, ConnectError } from '@connectrpc/connect';
import { fieldViolations } from '../../mesh/errors.js';
import {
  answerRepeatedAuthorize,
  captureDecision,
  cardLast4,
  refundDecision,
  validateAuthorize,
  visibleTo,
  type PaymentRecord,
  type PaymentState,
} from './domain.js';

const input = { orderId: 'o-1', userId: 'u-1', amountMinor: 500n, currencyCode: 'EUR', cardToken: 'tok_visa' };
const payment = (status: PaymentState, over: Partial<PaymentRecord> = {}): PaymentRecord => ({
  id: 'p-1',
  orderId: 'o-1',
  userId: 'u-1',
  amountMinor: 500n,
  currencyCode: 'EUR',
  status,
  declineReason: '',
  cardLast4: 'visa',
  authorizationCode: 'sim_1',
  createTime: new Date(0),
  updateTime: new Date(0),
  ...over,
});

function codeOf(fn: () => unknown): Code | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof ConnectError ? e.code : undefined;
  }
  return undefined;
}

test('validateAuthorize accepts a good request and names the bad field', (t) => {
  const ok = { orderId: 'o-1', userId: 'u-1', amount: { currencyCode: 'EUR', amountMinor: 500n }, cardToken: 'tok_visa' };
  t.deepEqual(validateAuthorize(ok), input);
  const field = (req: typeof ok | Omit<typeof ok, 'amount'>) => {
    try {
      validateAuthorize(req);
    } catch (e) {
      return fieldViolations(e as ConnectError)[0]?.field;
    }
    return undefined;
  };
  t.is(field({ ...ok, orderId: '' }), 'order_id');
  t.is(field({ ...ok, userId: 'has space' }), 'user_id');
  t.is(field({ orderId: 'o', userId: 'u', cardToken: 'tok_visa' }), 'amount');
  t.is(field({ ...ok, amount: { currencyCode: 'EURO', amountMinor: 1n } }), 'amount.currency_code');
  t.is(field({ ...ok, amount: { currencyCode: 'EUR', amountMinor: 0n } }), 'amount.amount_minor');
  t.is(field({ ...ok, cardToken: 'tok' }), 'card_token');
});

test('a repeated authorization answers the first result, refuses a tombstone or a different payment', (t) => {
  const first = payment('DECLINED', { declineReason: 'card declined' });
  t.is(answerRepeatedAuthorize(first, input), first);
  t.is(codeOf(() => answerRepeatedAuthorize(payment('TOMBSTONE'), input)), Code.FailedPrecondition);
  t.is(codeOf(() => answerRepeatedAuthorize(payment('AUTHORIZED'), { ...input, amountMinor: 501n })), Code.AlreadyExists);
  t.is(codeOf(() => answerRepeatedAuthorize(payment('AUTHORIZED'), { ...input, userId: 'u-2' })), Code.AlreadyExists);
});

test('capture and refund decisions per state', (t) => {
  t.is(captureDecision(payment('AUTHORIZED')), 'capture');
  t.is(captureDecision(payment('CAPTURED')), 'already');
  for (const s of ['DECLINED', 'VOIDED', 'REFUNDED', 'TOMBSTONE'] as const) {
    t.is(codeOf(() => captureDecision(payment(s))), Code.FailedPrecondition, s);
  }
  t.is(refundDecision(payment('AUTHORIZED')), 'void');
  t.is(refundDecision(payment('CAPTURED')), 'refund');
  t.is(refundDecision(payment('VOIDED')), 'already');
  t.is(refundDecision(payment('REFUNDED')), 'already');
  t.is(refundDecision(payment('DECLINED')), 'nothing');
  t.is(refundDecision(payment('TOMBSTONE')), 'nothing');
});

test('visibility: the payer and admins, never a tombstone', (t) => {
  t.true(visibleTo(payment('AUTHORIZED'), { userId: 'u-1', role: 'user' }));
  t.false(visibleTo(payment('AUTHORIZED'), { userId: 'u-2', role: 'user' }));
  t.true(visibleTo(payment('AUTHORIZED'), { userId: 'u-2', role: 'admin' }));
  t.false(visibleTo(payment('TOMBSTONE', { userId: '' }), { userId: 'x', role: 'admin' }));
  t.is(cardLast4('tok_visa'), 'visa');
});
