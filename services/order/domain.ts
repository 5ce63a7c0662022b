/**
 * The order context's rules, with no I/O: what a valid PlaceOrder is, how an
 * order is priced, which status changes are allowed, and how the saga moves
 * from step to step (including its retry schedule, its deadline and its bound).
 *
 * The saga, in one picture:
 *
 *   reserve ──ok──> authorize ──authorized──> confirm ──ok──> done (CONFIRMED)
 *      │                │                      │   │ transient after the capture
 *      │ short/refused  │ declined/refused     │   └──────> commit ──ok──> done (CONFIRMED)
 *      │ or deadline    │ or deadline          │ refused       │ refused (reservation expired)
 *      └────────────────┴──────────> compensate <──────────────┘
 *                                        └──ok──> done (CANCELLED, reason)
 *
 * A transient failure (UNAVAILABLE, DEADLINE_EXCEEDED, ...) leaves the step as
 * it is and schedules it again with a growing delay; every downstream call is
 * keyed by the order id, so running a step twice is harmless. Compensation
 * always asks for both a refund/void and a release: both are idempotent and
 * leave a tombstone when there is nothing to undo, so a late reserve or
 * authorize that is still in flight is refused instead of leaking.
 *
 * Two clocks, both from PlaceOrder:
 *   - the deadline (SAGA_DEADLINE, 60 s): reserve and authorize give up after
 *     it and compensate with "timeout";
 *   - the bound (SAGA_FINAL_WITHIN, 2 m, longer than the deadline): the ORDER
 *     is CONFIRMED or CANCELLED by then (plus one downstream call), even while
 *     inventory or payment is down for good. On the normal path nothing
 *     changes: the order goes final when its saga ends (a declined card ends
 *     CANCELLED with the stock already back). Only a saga still short of its
 *     end at the bound "settles": the order takes the final status the saga is
 *     now committed to, with its event, and the saga keeps retrying what is
 *     left (its obligations) in the background, unbounded, until done. The
 *     order row then says final while the saga row is not 'done' yet; that gap
 *     is logged and counted (order_saga_obligations_pending).
 *
 * Which status a saga settles on, by where it stands at the bound, so that the
 * status never contradicts what happens once the services are back. What the
 * other services answer (inventory/domain.ts, payment/domain.ts) decides it:
 * Release of RESERVED releases, of RELEASED/COMMITTED answers it unchanged (a
 * COMMITTED stays sold); Commit of RELEASED is refused for good, and the
 * inventory sweeper releases a RESERVED reservation once RESERVATION_TTL
 * (15 m) passes; Refund voids AUTHORIZED, refunds CAPTURED, answers VOIDED,
 * REFUNDED, DECLINED unchanged and tombstones an unknown order; Capture of
 * AUTHORIZED always succeeds (authorizations do not expire), of CAPTURED
 * answers it.
 *
 *   compensate  -> CANCELLED. The decision to undo is final: the saga never
 *                  sends reserve, authorize, capture or commit again, and
 *                  compensation is entered only while no commit can have
 *                  landed (see confirm/commit). Refund leaves the card
 *                  uncharged whatever state the payment is in (a capture whose
 *                  answer was lost is refunded: charged once, given back
 *                  once); release gives the stock back or finds it already
 *                  released (expired). So once both answer, CANCELLED is true.
 *   confirm     -> compensate, CANCELLED "timeout". In this step no
 *                  CommitReservation has been sent yet (the saga moves to
 *                  'commit', stored, before it retries after a commit that got
 *                  no answer; a saga taken over from a dead worker in confirm
 *                  is treated as 'commit'). The capture may have happened with
 *                  its answer lost: the refund undoes it. Settling CONFIRMED
 *                  here would be unsafe: while payment is down the reservation
 *                  keeps ageing, and the sweeper may release it before the
 *                  commit could be sent.
 *   commit      -> CONFIRMED; the saga keeps sending Capture (answers CAPTURED
 *                  again) and Commit. A commit may already have landed, so
 *                  cancelling could leave the stock sold to a cancelled order
 *                  (Release of COMMITTED changes nothing). Confirming is true
 *                  once the commit lands: the capture cannot fail (AUTHORIZED
 *                  stays capturable; CancelOrder refuses from confirm on), and
 *                  the commit only fails if the reservation was released,
 *                  which for an order in 'commit' happens only when inventory
 *                  stays away past the rest of RESERVATION_TTL (which must
 *                  therefore far exceed SAGA_FINAL_WITHIN: 15 m against 2 m by
 *                  default). That one residual case is an error log line: the
 *                  saga refunds and releases (compensates), and the order stays
 *                  CONFIRMED for a person to sort out.
 *   reserve, authorize -> (only when the deadline was configured past the
 *                  bound) compensate, CANCELLED "timeout".
 *
 * CancelOrder racing any of this: it locks the order row and refuses unless the
 * order is PENDING in reserve or authorize (it answers the order as it is when
 * it is final, FAILED_PRECONDITION in confirm/commit), and it takes the saga
 * over with a fresh lease, so the worker's later transitions (a settle among
 * them) are dropped: settling is stored under the worker's lease in one
 * statement with the order's move and its event, like the end of a saga.
 * Ending a settled saga moves nothing (the order is no longer PENDING) and
 * writes no second event.
 */
import { Code } from '@connectrpc/connect';
import { invalidArgument, failedPrecondition } from '../../mesh/errors.js';

// ---- limits ---------------------------------------------------------------------

export const IDEMPOTENCY_KEY_MIN = 8;
export const IDEMPOTENCY_KEY_MAX = 64;
export const MAX_LINES = 50;
export const MAX_QUANTITY = 100n;
export const MAX_CANCEL_REASON = 200;
/**
 * A card token as the payment service takes it (payment.proto, card_token; payment/domain.ts
 * CARD_TOKEN_PATTERN). Checked at PlaceOrder: a token payment would refuse otherwise passes,
 * reserves stock, and ends as an order cancelled for a declined payment.
 */
export const PAYMENT_TOKEN_PATTERN = /^[A-Za-z0-9_]{4,64}$/;

// ---- status -----------------------------------------------------------------------

export const ORDER_STATUSES = ['PENDING', 'CONFIRMED', 'CANCELLED'] as const;
export type OrderStatusName = (typeof ORDER_STATUSES)[number];

/** CONFIRMED and CANCELLED are final: nothing moves an order out of them. */
export function isFinal(status: OrderStatusName): boolean {
  return status === 'CONFIRMED' || status === 'CANCELLED';
}

/** The only moves an order makes: PENDING to one of the two final states. */
export function canTransition(from: OrderStatusName, to: OrderStatusName): boolean {
  return from === 'PENDING' && (to === 'CONFIRMED' || to === 'CANCELLED');
}

// ---- PlaceOrder validation ------------------------------------------------------------

export interface LineInput {
  sku: string;
  quantity: bigint;
}

export interface PlaceOrderInput {
  idempotencyKey: string;
  lines: LineInput[];
  paymentToken: string;
}

/** Throws INVALID_ARGUMENT naming the first bad field; returns the input with SKUs trimmed. */
export function validatePlaceOrder(input: PlaceOrderInput): PlaceOrderInput {
  const key = input.idempotencyKey;
  if (key.length < IDEMPOTENCY_KEY_MIN || key.length > IDEMPOTENCY_KEY_MAX) {
    throw invalidArgument(
      'idempotency_key',
      `must be ${IDEMPOTENCY_KEY_MIN}-${IDEMPOTENCY_KEY_MAX} characters, got ${key.length}`,
      key.length === 0 ? 'REQUIRED' : 'LENGTH',
    );
  }
  if (input.lines.length === 0) throw invalidArgument('lines', 'at least one line is required', 'REQUIRED');
  if (input.lines.length > MAX_LINES) {
    throw invalidArgument('lines', `at most ${MAX_LINES} lines, got ${input.lines.length}`, 'TOO_MANY');
  }
  const seen = new Set<string>();
  const lines: LineInput[] = [];
  input.lines.forEach((line, i) => {
    const sku = line.sku.trim();
    if (sku === '') throw invalidArgument(`lines[${i}].sku`, 'is required', 'REQUIRED');
    if (seen.has(sku)) throw invalidArgument(`lines[${i}].sku`, `SKU ${sku} appears more than once`, 'DUPLICATE');
    seen.add(sku);
    if (line.quantity < 1n || line.quantity > MAX_QUANTITY) {
      throw invalidArgument(`lines[${i}].quantity`, `must be 1-${MAX_QUANTITY}, got ${line.quantity}`, 'RANGE');
    }
    lines.push({ sku, quantity: line.quantity });
  });
  const token = input.paymentToken.trim();
  if (token === '') throw invalidArgument('payment_token', 'is required', 'REQUIRED');
  if (!PAYMENT_TOKEN_PATTERN.test(token)) {
    throw invalidArgument('payment_token', 'must be 4-64 letters, digits or underscores (a card token such as tok_visa)', 'FORMAT');
  }
  return { idempotencyKey: key, lines, paymentToken: token };
}

/** The user's cancel reason, trimmed; INVALID_ARGUMENT when too long. Empty means "cancelled by user". */
export function cancelReason(raw: string): string {
  const reason = raw.trim();
  if (reason.length > MAX_CANCEL_REASON) {
    throw invalidArgument('reason', `at most ${MAX_CANCEL_REASON} characters, got ${reason.length}`, 'LENGTH');
  }
  return reason === '' ? 'cancelled by user' : reason;
}

// ---- pricing ----------------------------------------------------------------------------

/** What the catalog says about one SKU (the part pricing needs). */
export interface CatalogPrice {
  sku: string;
  name: string;
  currency: string;
  unitPriceMinor: bigint;
}

export interface PricedLine {
  sku: string;
  name: string;
  quantity: bigint;
  unitPriceMinor: bigint;
  lineTotalMinor: bigint;
}

export interface PricedOrder {
  currency: string;
  lines: PricedLine[];
  totalMinor: bigint;
}

/**
 * Prices the lines with the catalog's answer. A SKU the catalog does not know
 * is INVALID_ARGUMENT naming the line; products in different currencies
 * cannot share an order (FAILED_PRECONDITION: the request is fine, the
 * catalog's state refuses it).
 */
/**
 * The largest total an order can have: what every client holds exactly (2^53, the catalog's
 * cap on one price). Without it, 50 lines of 100 units at prices near that cap passed a
 * bigint column's maximum and the insert failed as INTERNAL.
 */
export const MAX_TOTAL_MINOR = 2n ** 53n - 1n;

export function priceOrder(lines: LineInput[], prices: CatalogPrice[], missingSkus: string[] = []): PricedOrder {
  const bySku = new Map(prices.map((p) => [p.sku, p]));
  const missing = new Set(missingSkus);
  const priced: PricedLine[] = [];
  let currency: string | undefined;
  let total = 0n;
  lines.forEach((line, i) => {
    const p = bySku.get(line.sku);
    if (!p || missing.has(line.sku)) {
      throw invalidArgument(`lines[${i}].sku`, `no product with SKU ${line.sku}`, 'UNKNOWN_SKU');
    }
    if (currency === undefined) currency = p.currency;
    else if (p.currency !== currency) {
      throw failedPrecondition(
        'CURRENCY',
        `lines[${i}].sku`,
        `SKU ${line.sku} is priced in ${p.currency}, the order in ${currency}: one currency per order`,
      );
    }
    const lineTotal = p.unitPriceMinor * line.quantity;
    total += lineTotal;
    priced.push({ sku: line.sku, name: p.name, quantity: line.quantity, unitPriceMinor: p.unitPriceMinor, lineTotalMinor: lineTotal });
  });
  if (total > MAX_TOTAL_MINOR) {
    throw invalidArgument('lines', `the order's total, ${total} minor units, is over the most an order can hold (${MAX_TOTAL_MINOR}): split the order`, 'TOTAL_TOO_LARGE');
  }
  return { currency: currency!, lines: priced, totalMinor: total };
}

// ---- the saga ------------------------------------------------------------------------------

export const SAGA_STEPS = ['reserve', 'authorize', 'confirm', 'commit', 'compensate', 'done'] as const;
export type SagaStep = (typeof SAGA_STEPS)[number];

/** The step a crash test can stop the process right after (its effect is stored). */
export const CRASH_POINTS = ['reserve', 'authorize', 'confirm', 'compensate'] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

export const REASON_OUT_OF_STOCK = 'out of stock';
export const REASON_PAYMENT_DECLINED = 'payment declined';
export const REASON_TIMEOUT = 'timeout';

/** What running one step produced, as seen by the rules (the I/O happens in saga.ts). */
export type StepOutcome =
  /** The step's effect happened downstream; move on. */
  | { kind: 'ok' }
  /** Downstream refused for good (out of stock, declined, tombstone...): compensate with this reason. */
  | { kind: 'refused'; reason: string }
  /**
   * Could not tell (downstream unavailable, deadline): run the same step again later.
   * `commitSent`: confirm got as far as sending CommitReservation (the capture answered),
   * so a commit may have landed.
   */
  | { kind: 'transient'; error: string; commitSent?: boolean };

export interface SagaPosition {
  step: SagaStep;
  /** Attempts of the current step that ended transiently, so far. */
  attempt: number;
  /** When the saga must have reached confirm, or it is compensated with "timeout" (epoch ms). */
  deadlineAt: number;
  /** The bound: when the order must be final, settled if its saga has not ended (epoch ms). */
  finalBy: number;
  /** The order is already CONFIRMED or CANCELLED (settled earlier): only obligations are left. */
  orderFinal: boolean;
}

/** Where the saga goes next and what the order becomes, if anything. */
export interface SagaTransition {
  step: SagaStep;
  attempt: number;
  /** Delay before the next step runs (0 = at once). */
  delayMs: number;
  lastError: string | null;
  /** Set when the saga starts compensating: the reason the order will be cancelled with. */
  cancelReason?: string;
  /** Set when the saga ends with this transition: the order's final status (if it is still PENDING). */
  finalStatus?: 'CONFIRMED' | 'CANCELLED';
  /** Set when the order goes final now while the saga goes on (the bound passed): see the header. */
  settle?: 'CONFIRMED' | 'CANCELLED';
}

export interface RetryPolicy {
  /** First retry delay (ms). */
  baseDelayMs: number;
  /** Largest retry delay (ms). */
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { baseDelayMs: 100, maxDelayMs: 5_000 };

/**
 * Exponential backoff with "equal jitter": half the delay fixed, half random,
 * so that sagas that failed together (a downstream restart) do not all come
 * back in the same millisecond.
 */
export function retryDelay(attempt: number, policy: RetryPolicy = DEFAULT_RETRY, random = Math.random): number {
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp / 2 + (exp / 2) * random());
}

const NEXT: Record<'reserve' | 'authorize' | 'confirm' | 'commit', SagaStep> = {
  reserve: 'authorize',
  authorize: 'confirm',
  confirm: 'done',
  commit: 'done',
};

/**
 * The saga's state machine. `now` is epoch ms.
 *
 * The deadline bounds the steps that take something (reserve, authorize):
 * past it, they give up and compensate with "timeout". Confirm ignores it:
 * by then stock is held and payment authorized, and finishing is as safe as
 * undoing (both need the same services); a refusal there still compensates.
 * Compensation ignores it too: it must finish, so it retries until it does.
 *
 * The bound (`finalBy`) limits how long the ORDER waits for all that: a step
 * that fails (transiently, or compensation refused) past it, while the order is still PENDING, settles the order
 * (`settle`) on the status the header's table gives, and the saga goes on.
 * Before the bound, a retry is never scheduled later than the bound, so the
 * order is final within it plus one step's calls.
 */
export function nextTransition(pos: SagaPosition, outcome: StepOutcome, now: number, policy = DEFAULT_RETRY): SagaTransition {
  const t = baseTransition(pos, outcome, now, policy);
  if (pos.orderFinal || t.step === 'done') return t;
  // Settle only when what was due failed: a step that just succeeded (or a refusal on its
  // way to compensation) goes on at once, and the order ends the normal way if the next call works.
  const failed = outcome.kind === 'transient' || (outcome.kind === 'refused' && pos.step === 'compensate');
  if (failed && now >= pos.finalBy) return settleAtBound(t);
  return { ...t, delayMs: Math.min(t.delayMs, pos.finalBy - now) };
}

function baseTransition(pos: SagaPosition, outcome: StepOutcome, now: number, policy: RetryPolicy): SagaTransition {
  const { step } = pos;
  if (step === 'done') throw new Error('a finished saga has no next step');
  if (outcome.kind === 'ok') {
    if (step === 'compensate') return { step: 'done', attempt: 0, delayMs: 0, lastError: null, finalStatus: 'CANCELLED' };
    const next = NEXT[step];
    return {
      step: next,
      attempt: 0,
      delayMs: 0,
      lastError: null,
      ...(next === 'done' ? { finalStatus: 'CONFIRMED' as const } : {}),
    };
  }
  if (outcome.kind === 'refused') {
    if (step === 'compensate') {
      // Undoing was refused: nothing the saga can do better by retrying fast. Keep trying slowly; log says why.
      return { step, attempt: pos.attempt + 1, delayMs: policy.maxDelayMs, lastError: outcome.reason };
    }
    return { step: 'compensate', attempt: 0, delayMs: 0, lastError: outcome.reason, cancelReason: outcome.reason };
  }
  // transient
  const attempt = pos.attempt + 1;
  if ((step === 'reserve' || step === 'authorize') && now >= pos.deadlineAt) {
    return { step: 'compensate', attempt: 0, delayMs: 0, lastError: outcome.error, cancelReason: REASON_TIMEOUT };
  }
  // A commit may be out: from now on the saga can only go forward (see the header).
  const next = step === 'confirm' && outcome.commitSent ? 'commit' : step;
  return { step: next, attempt, delayMs: retryDelay(attempt, policy), lastError: outcome.error };
}

/** The order goes final now on the status the saga is committed to; the saga goes on (header: the table). */
function settleAtBound(t: SagaTransition): SagaTransition {
  switch (t.step) {
    case 'commit':
      return { ...t, settle: 'CONFIRMED' };
    case 'compensate':
      return { ...t, settle: 'CANCELLED' };
    default:
      // reserve, authorize, confirm: no commit can have landed; undo it all.
      return { step: 'compensate', attempt: 0, delayMs: 0, lastError: t.lastError, cancelReason: t.cancelReason ?? REASON_TIMEOUT, settle: 'CANCELLED' };
  }
}

/**
 * Whether a transition must be stored before the saga goes on. Reserve -> authorize
 * need not be: both calls are keyed by the order id, so a saga resumed from its
 * stored 'reserve' after a crash repeats ReserveStock and gets the same reservation
 * (one round trip to Postgres per order saved). The move to confirm must be stored
 * (from then on CancelOrder refuses, so it cannot race the capture), and so must every
 * retry (its backoff), compensation, settling and end.
 */
export function mustStore(from: SagaStep, t: SagaTransition): boolean {
  return !(from === 'reserve' && t.step === 'authorize' && t.delayMs === 0 && !t.settle);
}

/** A saga that is due but already past its deadline before its step ran goes straight to compensation. */
export function expiredBeforeRun(pos: Pick<SagaPosition, 'step' | 'deadlineAt'>, now: number): boolean {
  return (pos.step === 'reserve' || pos.step === 'authorize') && now >= pos.deadlineAt;
}

/**
 * Errors worth another try: the call may not have reached the service, or the
 * service could not answer now. Anything else is the service's final word.
 * UNKNOWN and INTERNAL are included because a connection torn down mid-call
 * surfaces as one of them, and the step is idempotent anyway; the deadline
 * stops a bug from retrying forever.
 */
export function isTransient(code: Code): boolean {
  return (
    code === Code.Unavailable ||
    code === Code.DeadlineExceeded ||
    code === Code.ResourceExhausted ||
    code === Code.Aborted ||
    code === Code.Unknown ||
    code === Code.Internal ||
    code === Code.Canceled
  );
}

// ---- paging ----------------------------------------------------------------------------------

/** Keyset cursor: the `seq` of the last order of the previous page (orders are listed by seq, newest first). */
export interface PageCursor {
  seq: bigint;
}

export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 100;

export function pageSize(requested: number): number {
  if (requested < 0) throw invalidArgument('page_size', 'must not be negative', 'RANGE');
  if (requested === 0) return DEFAULT_PAGE_SIZE;
  return Math.min(requested, MAX_PAGE_SIZE);
}

/** The largest value of a Postgres bigint (the seq column). */
const INT64_MAX = 2n ** 63n - 1n;

export function encodePageToken(cursor: PageCursor): string {
  return Buffer.from(`o1:${cursor.seq}`).toString('base64url');
}

export function decodePageToken(token: string): PageCursor | undefined {
  if (token === '') return undefined;
  const m = /^o1:(\d{1,19})$/.exec(Buffer.from(token, 'base64url').toString('utf8'));
  // Nineteen digits can pass a bigint column's maximum, which Postgres refuses (22003): no
  // token this service issued holds such a seq.
  if (!m || BigInt(m[1]!) > INT64_MAX) throw invalidArgument('page_token', 'is not a token this service issued', 'MALFORMED');
  return { seq: BigInt(m[1]!) };
}
