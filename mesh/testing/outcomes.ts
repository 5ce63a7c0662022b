/**
 * Test helpers for batch RPCs: whether a batch answered a request exactly as
 * the single call answers it.
 */
import type { ExecutionContext } from 'ava';
import { ConnectError } from '@connectrpc/connect';

/** A call's outcome, its response or its ConnectError, never a rejection. */
export function settle<T>(p: Promise<T>): Promise<T | ConnectError> {
  return p.catch((e: unknown) => ConnectError.from(e));
}

/** Asserts two outcomes alike as a caller sees them: responses whole, errors by code, message and details. */
export function sameOutcome(t: ExecutionContext, actual: unknown, expected: unknown, what: string): void {
  if (!(expected instanceof ConnectError)) {
    t.deepEqual(actual, expected, what);
    return;
  }
  if (!(actual instanceof ConnectError)) {
    t.fail(`${what}: answered ${String(actual)}, expected ${expected.message}`);
    return;
  }
  const details = (e: ConnectError) => e.details.map((d) => ('type' in d ? [d.type, Buffer.from(d.value).toString('hex')] : d));
  t.is(actual.code, expected.code, what);
  t.is(actual.rawMessage, expected.rawMessage, what);
  t.deepEqual(details(actual), details(expected), what);
}
