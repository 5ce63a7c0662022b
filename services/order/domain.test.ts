import test from 'ava';
import { Code, ConnectError } from '@connectrpc/connect';
import { fieldViolations } from '../../mesh/errors.js';
import {
  REASON_OUT_OF_STOCK,
  REASON_TIMEOUT,
  canTransition,
  cancelReason,
  decodePageToken,
  MAX_TOTAL_MINOR,
  encodePageToken,
  expiredBeforeRun,
  isTransient,
  mustStore,
  nextTransition,
  pageSize,
  priceOrder,
  retryDelay,
  validatePlaceOrder,
  type PlaceOrderInput,
} from './domain.js';

const ok: PlaceOrderInput = { idempotencyKey: 'key-12345', lines: [{ sku: 'A-1', quantity: 2n }], paymentToken: 'tok_visa' };

function fieldOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof ConnectError)) throw e;
    return fieldViolations(e)[0]?.field ?? `code:${Code[e.code]}`;
  }
  return undefined;
}

test('a valid PlaceOrder passes, SKUs trimmed', (t) => {
  const v = validatePlaceOrder({ ...ok, lines: [{ sku: ' A-1 ', quantity: 1n }] });
  t.is(v.lines[0]!.sku, 'A-1');
});

test('PlaceOrder validation names the field', (t) => {
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, idempotencyKey: 'short' })), 'idempotency_key');
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, idempotencyKey: 'x'.repeat(65) })), 'idempotency_key');
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, lines: [] })), 'lines');
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, lines: Array.from({ length: 51 }, (_, i) => ({ sku: `S${i}`, quantity: 1n })) })), 'lines');
  t.is(
    fieldOf(() => validatePlaceOrder({ ...ok, lines: [{ sku: 'A', quantity: 1n }, { sku: 'A', quantity: 2n }] })),
    'lines[1].sku',
  );
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, lines: [{ sku: 'A', quantity: 0n }] })), 'lines[0].quantity');
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, lines: [{ sku: 'A', quantity: 101n }] })), 'lines[0].quantity');
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, lines: [{ sku: ' ', quantity: 1n }] })), 'lines[0].sku');
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, paymentToken: '' })), 'payment_token');
  for (const token of ['tok-visa', 'tok', 'x'.repeat(65), 'tok visa', 'tok_visa\u0000']) {
    t.is(fieldOf(() => validatePlaceOrder({ ...ok, paymentToken: token })), 'payment_token', token);
  }
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, paymentToken: ' tok_visa ' })), undefined, 'trimmed, as before');
  t.is(fieldOf(() => validatePlaceOrder({ ...ok, idempotencyKey: 'x'.repeat(64), lines: [{ sku: 'A', quantity: 100n }] })), undefined);
});

test('pricing refuses a total over what an order can hold, naming lines; the cap itself is allowed', (t) => {
  const price = (unitPriceMinor: bigint) => [{ sku: 'A', name: 'A', currency: 'EUR', unitPriceMinor }];
  t.is(priceOrder([{ sku: 'A', quantity: 1n }], price(MAX_TOTAL_MINOR)).totalMinor, MAX_TOTAL_MINOR);
  t.is(fieldOf(() => priceOrder([{ sku: 'A', quantity: 2n }], price(MAX_TOTAL_MINOR))), 'lines');
  // 100 units at the catalog's largest price: within int64, past what a client holds exactly.
  t.is(fieldOf(() => priceOrder([{ sku: 'A', quantity: 100n }], price(2n ** 53n - 1n))), 'lines');
});

test('pricing multiplies, sums, and refuses unknown SKUs and mixed currencies', (t) => {
  const lines = [
    { sku: 'A', quantity: 3n },
    { sku: 'B', quantity: 1n },
  ];
  const p = priceOrder(lines, [
    { sku: 'B', name: 'Bee', currency: 'EUR', unitPriceMinor: 250n },
    { sku: 'A', name: 'Ay', currency: 'EUR', unitPriceMinor: 1000n },
  ]);
  t.is(p.currency, 'EUR');
  t.is(p.totalMinor, 3250n);
  t.deepEqual(
    p.lines.map((l) => [l.sku, l.name, l.lineTotalMinor]),
    [
      ['A', 'Ay', 3000n],
      ['B', 'Bee', 250n],
    ],
  );
  t.is(fieldOf(() => priceOrder(lines, [{ sku: 'A', name: 'Ay', currency: 'EUR', unitPriceMinor: 1n }], ['B'])), 'lines[1].sku');
  t.is(
    fieldOf(() =>
      priceOrder(lines, [
        { sku: 'A', name: 'Ay', currency: 'EUR', unitPriceMinor: 1n },
        { sku: 'B', name: 'Bee', currency: 'USD', unitPriceMinor: 1n },
      ]),
    ),
    'code:FailedPrecondition',
  );
});

test('orders only move from PENDING to a final state', (t) => {
  t.true(canTransition('PENDING', 'CONFIRMED'));
  t.true(canTransition('PENDING', 'CANCELLED'));
  t.false(canTransition('CONFIRMED', 'CANCELLED'));
  t.false(canTransition('CANCELLED', 'CONFIRMED'));
  t.false(canTransition('PENDING', 'PENDING'));
});

const pos = { attempt: 0, deadlineAt: 10_000, finalBy: 1_000_000, orderFinal: false };

test('the happy path walks reserve -> authorize -> confirm -> done(CONFIRMED)', (t) => {
  t.like(nextTransition({ ...pos, step: 'reserve' }, { kind: 'ok' }, 0), { step: 'authorize', delayMs: 0 });
  t.like(nextTransition({ ...pos, step: 'authorize' }, { kind: 'ok' }, 0), { step: 'confirm', delayMs: 0 });
  t.like(nextTransition({ ...pos, step: 'confirm' }, { kind: 'ok' }, 0), { step: 'done', finalStatus: 'CONFIRMED' });
  t.like(nextTransition({ ...pos, step: 'compensate' }, { kind: 'ok' }, 0), { step: 'done', finalStatus: 'CANCELLED' });
  t.throws(() => nextTransition({ ...pos, step: 'done' }, { kind: 'ok' }, 0));
});

test('a refusal compensates with its reason', (t) => {
  const r = nextTransition({ ...pos, step: 'reserve' }, { kind: 'refused', reason: REASON_OUT_OF_STOCK }, 0);
  t.like(r, { step: 'compensate', cancelReason: REASON_OUT_OF_STOCK, delayMs: 0 });
  // A refused compensation is retried slowly, never abandoned.
  t.like(nextTransition({ ...pos, step: 'compensate' }, { kind: 'refused', reason: 'x' }, 0), { step: 'compensate', attempt: 1 });
});

test('transient failures retry with growing delay until the deadline, then compensate with "timeout"', (t) => {
  const a = nextTransition({ ...pos, step: 'authorize', attempt: 0 }, { kind: 'transient', error: 'x' }, 0);
  t.like(a, { step: 'authorize', attempt: 1 });
  t.true(a.delayMs > 0);
  t.like(nextTransition({ ...pos, step: 'authorize', attempt: 3 }, { kind: 'transient', error: 'x' }, 10_000), {
    step: 'compensate',
    cancelReason: REASON_TIMEOUT,
  });
  // Confirm and compensate are not bounded by the deadline: they finish.
  t.like(nextTransition({ ...pos, step: 'confirm' }, { kind: 'transient', error: 'x' }, 99_999), { step: 'confirm', attempt: 1 });
  t.like(nextTransition({ ...pos, step: 'compensate' }, { kind: 'transient', error: 'x' }, 99_999), { step: 'compensate' });
  t.true(expiredBeforeRun({ ...pos, step: 'reserve' }, 10_000));
  t.false(expiredBeforeRun({ ...pos, step: 'confirm' }, 10_000));
});

test('retry delays grow and stay within the cap', (t) => {
  const policy = { baseDelayMs: 100, maxDelayMs: 1000 };
  t.is(retryDelay(1, policy, () => 1), 100);
  t.is(retryDelay(2, policy, () => 1), 200);
  t.is(retryDelay(3, policy, () => 0), 200);
  t.is(retryDelay(20, policy, () => 1), 1000);
});

test('only errors that may pass are transient', (t) => {
  t.true(isTransient(Code.Unavailable));
  t.true(isTransient(Code.DeadlineExceeded));
  t.false(isTransient(Code.FailedPrecondition));
  t.false(isTransient(Code.InvalidArgument));
  t.false(isTransient(Code.NotFound));
});

test('page tokens round-trip and refuse forgeries; page sizes default and cap', (t) => {
  t.deepEqual(decodePageToken(encodePageToken({ seq: 42n })), { seq: 42n });
  t.is(decodePageToken(''), undefined);
  t.is(fieldOf(() => decodePageToken('bm9wZQ')), 'page_token');
  const max = 2n ** 63n - 1n; // a bigint column's largest value
  t.deepEqual(decodePageToken(encodePageToken({ seq: max })), { seq: max });
  t.is(fieldOf(() => decodePageToken(encodePageToken({ seq: max + 1n }))), 'page_token', 'past int64: Postgres would refuse it');
  t.is(fieldOf(() => decodePageToken(encodePageToken({ seq: 10n ** 19n - 1n }))), 'page_token');
  t.is(pageSize(0), 20);
  t.is(pageSize(500), 100);
  t.is(fieldOf(() => pageSize(-1)), 'page_size');
});

test('cancel reasons default and are bounded', (t) => {
  t.is(cancelReason(''), 'cancelled by user');
  t.is(cancelReason(' changed my mind '), 'changed my mind');
  t.is(fieldOf(() => cancelReason('x'.repeat(201))), 'reason');
});

test('only reserve -> authorize goes on without being stored', (t) => {
  const pos = { step: 'reserve' as const, attempt: 0, deadlineAt: 1_000, finalBy: 2_000, orderFinal: false };
  t.false(mustStore('reserve', nextTransition(pos, { kind: 'ok' }, 0)));
  t.true(mustStore('authorize', nextTransition({ ...pos, step: 'authorize' }, { kind: 'ok' }, 0)), 'confirm is the barrier for CancelOrder');
  t.true(mustStore('reserve', nextTransition(pos, { kind: 'transient', error: 'x' }, 0)), 'a retry keeps its backoff');
  t.true(mustStore('reserve', nextTransition(pos, { kind: 'refused', reason: 'out of stock' }, 0)));
});

test('confirm moves to commit once a commit may be out, and only then', (t) => {
  const x = { kind: 'transient' as const, error: 'x' };
  t.like(nextTransition({ ...pos, step: 'confirm' }, x, 0), { step: 'confirm', attempt: 1 }, 'capture failed: no commit sent');
  t.like(nextTransition({ ...pos, step: 'confirm' }, { ...x, commitSent: true }, 0), { step: 'commit', attempt: 1 });
  t.like(nextTransition({ ...pos, step: 'commit' }, x, 0), { step: 'commit', attempt: 1 });
  t.like(nextTransition({ ...pos, step: 'commit' }, { kind: 'ok' }, 0), { step: 'done', finalStatus: 'CONFIRMED' });
  // The reservation was released (expired) before the commit: undo the rest.
  t.like(nextTransition({ ...pos, step: 'commit' }, { kind: 'refused', reason: REASON_TIMEOUT }, 0), { step: 'compensate' });
  t.true(mustStore('confirm', nextTransition({ ...pos, step: 'confirm' }, { ...x, commitSent: true }, 0)));
});

test('before the bound a retry is never scheduled past it, and nothing settles', (t) => {
  const near = { ...pos, finalBy: 1_010 };
  const r = nextTransition({ ...near, step: 'compensate', attempt: 10 }, { kind: 'transient', error: 'x' }, 1_000);
  t.is(r.delayMs, 10);
  t.is(r.settle, undefined);
  t.is(nextTransition({ ...near, step: 'compensate' }, { kind: 'refused', reason: 'x' }, 1_000).delayMs, 10);
});

test('at the bound a failing saga settles its order on the status it is committed to, and goes on', (t) => {
  const late = { ...pos, finalBy: 1_000 };
  const x = { kind: 'transient' as const, error: 'inventory: Unavailable' };
  // Compensating: CANCELLED now, compensation keeps retrying.
  t.like(nextTransition({ ...late, step: 'compensate' }, x, 1_000), {
    step: 'compensate',
    settle: 'CANCELLED',
    finalStatus: undefined,
  });
  t.like(nextTransition({ ...late, step: 'compensate' }, { kind: 'refused', reason: 'x' }, 1_000), { step: 'compensate', settle: 'CANCELLED' });
  // Confirm, no commit sent: undo (a capture whose answer was lost is refunded).
  t.like(nextTransition({ ...late, step: 'confirm' }, x, 1_000), { step: 'compensate', settle: 'CANCELLED', cancelReason: REASON_TIMEOUT, delayMs: 0 });
  // A commit may be out: CONFIRMED now, commit keeps retrying.
  t.like(nextTransition({ ...late, step: 'confirm' }, { ...x, commitSent: true }, 1_000), { step: 'commit', settle: 'CONFIRMED' });
  t.like(nextTransition({ ...late, step: 'commit' }, x, 1_000), { step: 'commit', settle: 'CONFIRMED' });
  // Reserve/authorize (a deadline configured past the bound): undo.
  t.like(nextTransition({ ...late, deadlineAt: 5_000, step: 'authorize' }, x, 1_000), { step: 'compensate', settle: 'CANCELLED' });
  // A step that just worked goes on at once; the next one decides.
  const ok = nextTransition({ ...late, step: 'authorize' }, { kind: 'ok' }, 1_000);
  t.like(ok, { step: 'confirm', delayMs: 0 });
  t.is(ok.settle, undefined);
  // Settled already: only obligations are left, with their own backoff, no second settle.
  const after = nextTransition({ ...late, orderFinal: true, step: 'compensate', attempt: 20 }, x, 999_999);
  t.is(after.settle, undefined);
  t.true(after.delayMs > 0);
  t.like(nextTransition({ ...late, orderFinal: true, step: 'commit' }, { kind: 'ok' }, 999_999), { step: 'done', finalStatus: 'CONFIRMED' });
  t.true(mustStore('reserve', { step: 'authorize', attempt: 0, delayMs: 0, lastError: null, settle: 'CANCELLED' }));
});
