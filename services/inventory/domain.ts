/**
 * Inventory rules, with no I/O: what a valid request is, what a reservation
 * may turn into, and what a repeated call answers.
 *
 * A reservation id is single-use. Its life:
 *
 *   (none) --reserve--> RESERVED --commit--> COMMITTED
 *                          |
 *                          +--release / expiry--> RELEASED
 *   (none) --release--> RELEASED (tombstone: nothing was held)
 *
 * - Reserve of an id that is RESERVED or COMMITTED answers that reservation
 *   (a retried call) when the lines are the same, ALREADY_EXISTS when they differ.
 * - Reserve of a RELEASED id (released, expired or tombstoned) is refused with
 *   FAILED_PRECONDITION (type RESERVATION_RELEASED): the caller already gave up
 *   on it, so holding stock now would leak it. Not ABORTED: gRPC clients
 *   (the order saga among them) retry ABORTED, and this answer never changes.
 * - Release of RELEASED or COMMITTED answers it unchanged (COMMITTED stays sold).
 * - Commit of COMMITTED answers it; of RELEASED is FAILED_PRECONDITION; of an
 *   unknown id NOT_FOUND.
 */
import { Code, ConnectError } from '@connectrpc/connect';
import { failedPrecondition, invalidArgument, type FieldViolation, invalidArguments } from '../../mesh/errors.js';

/** SKU as the catalog defines it: 3-32 characters of A-Z, 0-9 and '-'. */
export const SKU_PATTERN = /^[A-Z0-9-]{3,32}$/;
/** Reservation ids are order ids (UUIDs), but any opaque token of this shape is accepted. */
export const RESERVATION_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
export const MAX_LINES = 100;
export const MAX_LINE_QUANTITY = 1000;
/** Upper bound of on-hand stock: far beyond any shop, far below int64 trouble in JS. */
export const MAX_ON_HAND = 1_000_000_000;
export const MAX_REASON_LENGTH = 500;

export type ReservationState = 'RESERVED' | 'RELEASED' | 'COMMITTED';

export interface Line {
  sku: string;
  quantity: number;
}

export interface ReservationRecord {
  id: string;
  status: ReservationState;
  lines: Line[];
  /** Epoch ms when a RESERVED reservation expires. */
  expireAt: number;
  /** Why it was released ("expired", the caller's reason), empty otherwise. */
  releaseReason: string;
  /** True when released before it was ever reserved (nothing held). */
  tombstone: boolean;
}

export function validateSku(sku: string, field = 'sku'): void {
  if (sku === '') throw invalidArgument(field, 'is required', 'REQUIRED');
  if (!SKU_PATTERN.test(sku)) throw invalidArgument(field, 'must be 3-32 characters of A-Z, 0-9 and -', 'PATTERN');
}

export function validateOnHand(onHand: bigint): number {
  if (onHand < 0n) throw invalidArgument('on_hand', 'must be 0 or more', 'RANGE');
  if (onHand > BigInt(MAX_ON_HAND)) throw invalidArgument('on_hand', `must be at most ${MAX_ON_HAND}`, 'RANGE');
  return Number(onHand);
}

export function validateReservationId(id: string, field = 'reservation_id'): void {
  if (id === '') throw invalidArgument(field, 'is required', 'REQUIRED');
  if (!RESERVATION_ID_PATTERN.test(id)) {
    throw invalidArgument(field, 'must be 1-128 characters of letters, digits and ._:-', 'PATTERN');
  }
}

export function validateReason(reason: string): void {
  if (reason.length > MAX_REASON_LENGTH) {
    throw invalidArgument('reason', `must be at most ${MAX_REASON_LENGTH} characters`, 'LENGTH');
  }
}

/**
 * Checks the lines of a ReserveStock request and returns them sorted by SKU:
 * rows are always locked in that order, so two reservations sharing SKUs
 * never deadlock.
 */
export function validateLines(lines: ReadonlyArray<{ sku: string; quantity: bigint }>): Line[] {
  if (lines.length === 0) throw invalidArgument('lines', 'at least one line is required', 'REQUIRED');
  if (lines.length > MAX_LINES) throw invalidArgument('lines', `at most ${MAX_LINES} lines`, 'LENGTH');
  const violations: FieldViolation[] = [];
  const seen = new Set<string>();
  lines.forEach((line, i) => {
    if (line.sku === '') violations.push({ field: `lines[${i}].sku`, description: 'is required', reason: 'REQUIRED' });
    else if (!SKU_PATTERN.test(line.sku)) {
      violations.push({ field: `lines[${i}].sku`, description: 'must be 3-32 characters of A-Z, 0-9 and -', reason: 'PATTERN' });
    } else if (seen.has(line.sku)) {
      violations.push({ field: `lines[${i}].sku`, description: `${line.sku} appears more than once`, reason: 'DUPLICATE' });
    }
    seen.add(line.sku);
    if (line.quantity < 1n || line.quantity > BigInt(MAX_LINE_QUANTITY)) {
      violations.push({ field: `lines[${i}].quantity`, description: `must be 1-${MAX_LINE_QUANTITY}`, reason: 'RANGE' });
    }
  });
  if (violations.length > 0) throw invalidArguments(violations);
  return sortLines(lines.map((l) => ({ sku: l.sku, quantity: Number(l.quantity) })));
}

export function sortLines(lines: Line[]): Line[] {
  return [...lines].sort((a, b) => (a.sku < b.sku ? -1 : a.sku > b.sku ? 1 : 0));
}

export function sameLines(a: Line[], b: Line[]): boolean {
  const x = sortLines(a);
  const y = sortLines(b);
  return x.length === y.length && x.every((l, i) => l.sku === y[i]!.sku && l.quantity === y[i]!.quantity);
}

/** The answer to a ReserveStock whose id already exists. */
export function answerRepeatedReserve(existing: ReservationRecord, requested: Line[]): ReservationRecord {
  if (existing.status === 'RELEASED') {
    const why = existing.tombstone ? 'was released before it was reserved' : `was released (${existing.releaseReason || 'released'})`;
    throw failedPrecondition(
      'RESERVATION_RELEASED',
      `reservation ${existing.id}`,
      `${why}; a released reservation id cannot be reserved again`,
    );
  }
  if (!sameLines(existing.lines, requested)) {
    throw new ConnectError(
      `reservation ${existing.id} already exists with different lines; a reservation id is used once`,
      Code.AlreadyExists,
    );
  }
  return existing;
}

/** What CommitReservation does to a reservation in a given state. */
export function commitDecision(r: ReservationRecord): 'commit' | 'already' {
  switch (r.status) {
    case 'RESERVED':
      return 'commit';
    case 'COMMITTED':
      return 'already';
    case 'RELEASED':
      throw failedPrecondition(
        'RESERVATION_RELEASED',
        `reservation ${r.id}`,
        r.tombstone
          ? 'was released before it was reserved; nothing to commit'
          : `was released (${r.releaseReason || 'released'}); nothing to commit`,
      );
  }
}

/** What ReleaseReservation does to a reservation in a given state. */
export function releaseDecision(r: ReservationRecord): 'release' | 'unchanged' {
  return r.status === 'RESERVED' ? 'release' : 'unchanged';
}

/** The error ReserveStock answers when a SKU cannot cover its line. */
export function insufficientStock(sku: string, requested: number, available: number): ConnectError {
  return failedPrecondition('INSUFFICIENT_STOCK', sku, `only ${available} available, ${requested} requested`);
}
