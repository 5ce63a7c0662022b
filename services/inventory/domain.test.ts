import test from 'ava';
import { Code, ConnectError } from '@connectrpc/connect';
import { fieldViolations } from '../../mesh/errors.js';
import {
  answerRepeatedReserve,
  commitDecision,
  releaseDecision,
  sameLines,
  validateLines,
  validateOnHand,
  validateReservationId,
  validateSku,
  type ReservationRecord,
} from './domain.js';

const reservation = (over: Partial<ReservationRecord> = {}): ReservationRecord => ({
  id: 'o-1',
  status: 'RESERVED',
  lines: [{ sku: 'AAA-1', quantity: 2 }],
  expireAt: 0,
  releaseReason: '',
  tombstone: false,
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

test('validateLines sorts by SKU and converts quantities', (t) => {
  t.deepEqual(
    validateLines([
      { sku: 'BBB-2', quantity: 1n },
      { sku: 'AAA-1', quantity: 1000n },
    ]),
    [
      { sku: 'AAA-1', quantity: 1000 },
      { sku: 'BBB-2', quantity: 1 },
    ],
  );
});

test('validateLines reports every bad line by field', (t) => {
  const err = t.throws(() =>
    validateLines([
      { sku: 'AAA-1', quantity: 0n },
      { sku: 'bad', quantity: 1n },
      { sku: 'AAA-1', quantity: 1n },
    ]),
  ) as ConnectError;
  t.is(err.code, Code.InvalidArgument);
  t.deepEqual(
    fieldViolations(err).map((v) => v.field),
    ['lines[0].quantity', 'lines[1].sku', 'lines[2].sku'],
  );
  t.is(codeOf(() => validateLines([])), Code.InvalidArgument);
  t.is(codeOf(() => validateLines(Array.from({ length: 101 }, (_, i) => ({ sku: `SKU-${i}`, quantity: 1n })))), Code.InvalidArgument);
});

test('field validators', (t) => {
  t.is(codeOf(() => validateSku('AB')), Code.InvalidArgument);
  t.is(codeOf(() => validateSku('ABC-123')), undefined);
  t.is(codeOf(() => validateOnHand(-1n)), Code.InvalidArgument);
  t.is(validateOnHand(0n), 0);
  t.is(codeOf(() => validateOnHand(10_000_000_000n)), Code.InvalidArgument);
  t.is(codeOf(() => validateReservationId('')), Code.InvalidArgument);
  t.is(codeOf(() => validateReservationId('0b7f3c1e-8d2a-4f4e-9a51-6f1a2b3c4d5e')), undefined);
});

test('a repeated reserve answers the stored reservation, refuses a spent id or different lines', (t) => {
  const r = reservation();
  t.is(answerRepeatedReserve(r, [{ sku: 'AAA-1', quantity: 2 }]), r);
  t.is(answerRepeatedReserve(reservation({ status: 'COMMITTED' }), [{ sku: 'AAA-1', quantity: 2 }]).status, 'COMMITTED');
  t.is(codeOf(() => answerRepeatedReserve(r, [{ sku: 'AAA-1', quantity: 3 }])), Code.AlreadyExists);
  t.is(codeOf(() => answerRepeatedReserve(reservation({ status: 'RELEASED' }), r.lines)), Code.FailedPrecondition);
  t.is(codeOf(() => answerRepeatedReserve(reservation({ status: 'RELEASED', tombstone: true, lines: [] }), r.lines)), Code.FailedPrecondition);
});

test('commit and release decisions per state', (t) => {
  t.is(commitDecision(reservation()), 'commit');
  t.is(commitDecision(reservation({ status: 'COMMITTED' })), 'already');
  t.is(codeOf(() => commitDecision(reservation({ status: 'RELEASED' }))), Code.FailedPrecondition);
  t.is(releaseDecision(reservation()), 'release');
  t.is(releaseDecision(reservation({ status: 'RELEASED' })), 'unchanged');
  t.is(releaseDecision(reservation({ status: 'COMMITTED' })), 'unchanged');
});

test('sameLines ignores order', (t) => {
  t.true(sameLines([{ sku: 'A-1', quantity: 1 }, { sku: 'B-1', quantity: 2 }], [{ sku: 'B-1', quantity: 2 }, { sku: 'A-1', quantity: 1 }]));
  t.false(sameLines([{ sku: 'A-1', quantity: 1 }], [{ sku: 'A-1', quantity: 2 }]));
});
