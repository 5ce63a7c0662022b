import test from 'ava';
import { Code, ConnectError } from '@connectrpc/connect';
import { AMOUNT_LIMIT_MINOR, SimulatedProcessor } from './processor.js';

const processor = new SimulatedProcessor({ slowMs: 20 });
const req = (cardToken: string, amountMinor = 100n) => ({ idempotencyKey: 'order-1', cardToken, amountMinor, currencyCode: 'EUR' });

test('tok_visa approves, with the same authorization code for the same key', async (t) => {
  const a = await processor.authorize(req('tok_visa'));
  const b = await processor.authorize(req('tok_visa'));
  t.true(a.approved);
  t.deepEqual(a, b);
  const other = await processor.authorize({ ...req('tok_visa'), idempotencyKey: 'order-2' });
  t.notDeepEqual(other, a);
});

test('tok_declined and unknown tokens decline with a reason', async (t) => {
  t.deepEqual(await processor.authorize(req('tok_declined')), { approved: false, declineReason: 'card declined' });
  t.deepEqual(await processor.authorize(req('tok_amex')), { approved: false, declineReason: 'unknown card token' });
});

test('amounts over the limit decline whatever the token', async (t) => {
  for (const token of ['tok_visa', 'tok_slow', 'tok_error']) {
    t.deepEqual(await processor.authorize(req(token, AMOUNT_LIMIT_MINOR + 1n)), { approved: false, declineReason: 'amount over limit' });
  }
  t.true((await processor.authorize(req('tok_visa', AMOUNT_LIMIT_MINOR))).approved);
});

test('tok_error is UNAVAILABLE', async (t) => {
  const err = await t.throwsAsync(processor.authorize(req('tok_error')));
  t.true(err instanceof ConnectError);
  t.is((err as ConnectError).code, Code.Unavailable);
});

test('tok_slow approves after the delay, and stops early when the call is cancelled', async (t) => {
  t.true((await processor.authorize(req('tok_slow'))).approved);
  const slow = new SimulatedProcessor({ slowMs: 60_000 });
  const abort = new AbortController();
  const pending = slow.authorize(req('tok_slow'), abort.signal);
  abort.abort(new Error('cancelled'));
  await t.throwsAsync(pending, { message: 'cancelled' });
});
