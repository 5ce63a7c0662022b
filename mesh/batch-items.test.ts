import test from 'ava';
import { Code, ConnectError } from '@connectrpc/connect';
import { PreconditionFailureSchema } from '../gen/google/rpc/error_details_pb.js';
import { answerItem, checkBatchSize, errorFromStatus, itemOutcome, passes, statusFromError } from './batch-items.js';
import { failedPrecondition, fieldViolations, invalidArguments } from './errors.js';

test('a refusal survives the trip through google.rpc.Status: code, message and details', (t) => {
  const err = errorFromStatus(statusFromError(failedPrecondition('INSUFFICIENT_STOCK', 'SKU-1', 'only 0 available')));
  t.is(err.code, Code.FailedPrecondition);
  t.is(err.rawMessage, 'SKU-1: only 0 available');
  t.is(err.findDetails(PreconditionFailureSchema)[0]?.violations[0]?.type, 'INSUFFICIENT_STOCK');
  t.is(errorFromStatus(statusFromError(new ConnectError('down', Code.Unavailable))).code, Code.Unavailable);
});

test('answerItem answers a response, or a ConnectError as its Status with the fields named under requests[i]', async (t) => {
  t.deepEqual(await answerItem(0, async () => 'ok'), { case: 'response', value: 'ok' });
  const bad = await answerItem(3, async () => {
    throw invalidArguments([
      { field: 'lines[0].quantity', description: 'must be 1-1000' },
      { field: 'reservation_id', description: 'is required' },
    ]);
  });
  const err = itemOutcome({ result: bad }) as ConnectError;
  t.is(err.code, Code.InvalidArgument);
  t.deepEqual(fieldViolations(err).map((v) => v.field), ['requests[3].lines[0].quantity', 'requests[3].reservation_id']);
  t.is(err.rawMessage, 'requests[3].lines[0].quantity: must be 1-1000 (and 1 more)');
});

test('anything but a ConnectError fails the batch (a bug or a lost database is not one request\'s answer)', async (t) => {
  await t.throwsAsync(answerItem(0, async () => { throw new Error('connection lost'); }), { message: 'connection lost' });
});

test('checkBatchSize refuses none and too many on `requests`; passes tells a check that throws', (t) => {
  t.is(fieldViolations(t.throws(() => checkBatchSize([]), { instanceOf: ConnectError })!)[0]?.field, 'requests');
  t.throws(() => checkBatchSize(new Array(101).fill(0)), { instanceOf: ConnectError });
  t.notThrows(() => checkBatchSize(new Array(100).fill(0)));
  t.true(passes(() => 1));
  t.false(passes(() => { throw new Error('no'); }));
  t.is((itemOutcome({ result: { case: undefined } }) as ConnectError).code, Code.Internal);
});
