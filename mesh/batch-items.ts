/**
 * Batch RPCs whose every item is answered like a call of its own: by the
 * single RPC's response or by the error it would have failed with, carried
 * as a google.rpc.Status, so one item's refusal never fails the others.
 *
 *   checkBatchSize(requests, max?)       INVALID_ARGUMENT on `requests` for none or too many
 *   passes(check)                        whether a validation passes (the invalid requests are
 *                                        left out of the work, then answered by answerItem)
 *   answerItem(index, run)               run one item; a ConnectError becomes its Status, its
 *                                        field violations renamed "requests[<index>].<field>";
 *                                        anything else (a bug, a lost database) fails the batch
 *   statusFromError(err) / errorFromStatus(status)   a ConnectError as a Status and back
 *                                        (code, message, details)
 *   itemOutcome(result)                  the caller's side: a Result as the single call's outcome,
 *                                        its response or the ConnectError it would have thrown
 *
 * Why anything but a ConnectError fails the whole batch: it is what a single
 * call answers INTERNAL for, and the server logs it only when it leaves the
 * handler; every item of a batch RPC is idempotent, so the caller retries them all.
 */
import { create } from '@bufbuild/protobuf';
import { anyPack } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError } from '@connectrpc/connect';
import { StatusSchema, type Status } from '../gen/google/rpc/status_pb.js';
import { fieldViolations, invalidArgument, invalidArguments } from './errors.js';

/** The most items a batch RPC takes (each proto says so). */
export const MAX_BATCH_REQUESTS = 100;

/** One item's answer, the shape of a `Result`'s oneof. */
export type ItemResult<T> = { case: 'response'; value: T } | { case: 'error'; value: Status };

export function checkBatchSize(requests: readonly unknown[], max = MAX_BATCH_REQUESTS, field = 'requests'): void {
  if (requests.length === 0) throw invalidArgument(field, 'at least one request is required', 'REQUIRED');
  if (requests.length > max) throw invalidArgument(field, `at most ${max} requests`, 'LENGTH');
}

/** Whether `check` passes (returns) rather than throws. */
export function passes(check: () => unknown): boolean {
  try {
    check();
    return true;
  } catch {
    return false;
  }
}

/** Runs item `index` of a batch and answers its response, or its refusal as a Status. */
export async function answerItem<T>(index: number, run: () => Promise<T>, field = 'requests'): Promise<ItemResult<T>> {
  try {
    return { case: 'response', value: await run() };
  } catch (err) {
    if (!(err instanceof ConnectError)) throw err;
    return { case: 'error', value: statusFromError(renameFields(err, `${field}[${index}].`)) };
  }
}

/** A refusal as a google.rpc.Status: code, message and details as the error trailer would carry them. */
export function statusFromError(err: ConnectError): Status {
  return create(StatusSchema, {
    code: err.code,
    message: err.rawMessage,
    details: err.details.map((d) =>
      'desc' in d ? anyPack(d.desc, create(d.desc, d.value)) : { typeUrl: `type.googleapis.com/${d.type}`, value: d.value },
    ),
  });
}

/** The ConnectError a call of its own would have thrown, from an item's Status (details readable with findDetails). */
export function errorFromStatus(status: Status): ConnectError {
  const code = status.code in Code && status.code !== 0 ? (status.code as Code) : Code.Unknown;
  const err = new ConnectError(status.message, code);
  err.details = status.details.map((any) => ({
    type: any.typeUrl.substring(any.typeUrl.lastIndexOf('/') + 1),
    value: any.value,
  }));
  return err;
}

/** A batch Result as the single call's outcome: its response, or the ConnectError it would have thrown. */
export function itemOutcome<T>(r: { result: ItemResult<T> | { case: undefined; value?: undefined } }): T | ConnectError {
  if (r.result.case === 'response') return r.result.value;
  if (r.result.case === 'error') return errorFromStatus(r.result.value);
  return new ConnectError('the batch answered a request with neither a response nor an error', Code.Internal);
}

/** The same INVALID_ARGUMENT with every field named under `prefix`; any other error as it is. */
function renameFields(err: ConnectError, prefix: string): ConnectError {
  const violations = err.code === Code.InvalidArgument ? fieldViolations(err) : [];
  if (violations.length === 0) return err;
  return invalidArguments(violations.map((v) => ({ ...v, field: prefix + v.field })));
}
