/**
 * The order saga's orchestrator: runs the steps of domain.ts against the
 * inventory and payment services and stores every transition in
 * `order.sagas`, so that any replica can pick a saga up where a crashed one
 * left it.
 *
 * How work is found:
 *   - kick: PlaceOrder inserts the saga row already leased to this process
 *     and hands it here right after its transaction commits, so the happy
 *     path never waits for a poll.
 *   - poll: every `pollIntervalMs`, claim due rows (retries after a backoff,
 *     rows whose lease ran out because their replica died, rows of a replica
 *     that never kicked them) with FOR UPDATE SKIP LOCKED, so replicas share
 *     the work without blocking on each other.
 *
 * A claim stamps a fresh lease token and moves next_run_at to the end of the
 * lease. Every transition is an UPDATE ... WHERE lease_token = <mine>: when
 * CancelOrder (or a replica, after the lease expired) took the saga over, the
 * stale worker's result is dropped. Downstream calls are keyed by the order
 * id, so a step that runs twice has one effect.
 *
 * The bound (SAGA_FINAL_WITHIN, domain.ts' header): a saga still short of its
 * end when it passes settles its order (status + event, under the lease, one
 * statement) and keeps working off what is left; the log says so, and
 * saga-metrics.ts counts such sagas.
 */
import { randomUUID } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import { timestampNow } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import { and, eq, sql } from 'drizzle-orm';
import type { Database } from '../../mesh/db.js';
import { resultRows } from '../../mesh/db.js';
import { runWithCallContext } from '../../mesh/call-context.js';
import { InventoryService } from '../../gen/shop/inventory/v1/inventory_pb.js';
import { PaymentService, PaymentStatus } from '../../gen/shop/payment/v1/payment_pb.js';
import { OrderCancelledSchema, OrderConfirmedSchema } from '../../gen/shop/order/v1/order_pb.js';
import type { OrderChanges } from './changes.js';
import {
  DEFAULT_RETRY,
  REASON_OUT_OF_STOCK,
  REASON_PAYMENT_DECLINED,
  REASON_TIMEOUT,
  expiredBeforeRun,
  isTransient,
  mustStore,
  nextTransition,
  type CrashPoint,
  type RetryPolicy,
  type SagaStep,
  type SagaTransition,
  type OrderStatusName,
  type StepOutcome,
} from './domain.js';
import { orders, sagas } from './schema.js';
import { outboxRow, settleOrder } from './writes.js';
import { createSagaFinisher } from './finish-batch.js';
import { money } from './store.js';
import { runStatement } from './statements.js';
import { createStepStore, STORE_STEP_SET, STORE_STEP_WHERE } from './step-store.js';

export interface SagaPorts {
  inventory: Client<typeof InventoryService>;
  payment: Client<typeof PaymentService>;
}

export interface SagaSettings {
  /** How long a claim holds a saga; longer than the slowest step call. */
  leaseMs: number;
  /** Fallback poll for due sagas. */
  pollIntervalMs: number;
  /** Sagas the poller runs at once (kicked ones come on top). */
  concurrency: number;
  /** Backoff of transient failures. */
  retry: RetryPolicy;
  /** NATS subject prefix for the events written to the outbox. */
  subjectPrefix: string;
  /**
   * The bound: an order is CONFIRMED or CANCELLED at most this long after it was placed
   * (plus one step's calls), its saga settling early when a dependency is down.
   */
  finalWithinMs: number;
  /** Test hook: SIGKILL this process right after this step's transition is stored. */
  crashAfter?: CrashPoint;
}

export const DEFAULT_SAGA_SETTINGS: SagaSettings = {
  leaseMs: 15_000,
  pollIntervalMs: 500,
  concurrency: 64,
  retry: DEFAULT_RETRY,
  subjectPrefix: '',
  finalWithinMs: 120_000,
};

/** What the saga needs to know about its order; loaded once per run. */
export interface SagaSubject {
  orderId: string;
  userId: string;
  currency: string;
  totalMinor: bigint;
  lines: { sku: string; quantity: bigint }[];
  paymentToken: string;
  step: SagaStep;
  attempt: number;
  deadlineAt: Date;
  cancelReason: string | null;
  /** When the order was placed: the bound counts from here. */
  placedAt: Date;
  /** The order's status: PENDING until the saga ends or settles it. */
  orderStatus: OrderStatusName;
}

interface Log {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** The saga's transition was not stored: someone else holds it now. */
class LeaseLost extends Error {}

export class SagaOrchestrator {
  readonly #db: Database;
  /** Step stores, coalesced across this process's sagas (step-store.ts). */
  readonly #steps: ReturnType<typeof createStepStore>;
  /** Saga ends, coalesced the same way (finish-batch.ts). */
  readonly #finisher: ReturnType<typeof createSagaFinisher>;
  readonly #ports: SagaPorts;
  readonly #changes: OrderChanges;
  readonly #settings: SagaSettings;
  readonly #log: Log;
  /** Runs in progress in this process, by order id. */
  readonly #running = new Map<string, Promise<void>>();
  #polled = 0;
  #claimedTotal = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = true;

  constructor(db: Database, ports: SagaPorts, changes: OrderChanges, settings: Partial<SagaSettings> = {}, log?: Log) {
    this.#db = db;
    this.#steps = createStepStore(db);
    this.#finisher = createSagaFinisher(db);
    this.#ports = ports;
    this.#changes = changes;
    this.#settings = { ...DEFAULT_SAGA_SETTINGS, ...settings };
    this.#log = log ?? { info() {}, warn() {}, error() {} };
  }

  get leaseMs(): number {
    return this.#settings.leaseMs;
  }

  /** Sagas this process claimed by polling since it started (kicked ones not counted). */
  get claimedTotal(): number {
    return this.#claimedTotal;
  }

  /** How many sagas this process is running now. */
  get inFlight(): number {
    return this.#running.size;
  }

  /** Starts the poller (at once, then every pollIntervalMs). */
  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#schedule(0);
  }

  /** Stops polling and waits for the runs in progress (their leases stay valid until they end). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await Promise.allSettled([...this.#running.values()]);
  }

  /**
   * Runs a saga this process already holds (PlaceOrder inserted it with
   * `leaseToken`, CancelOrder took it over). Resolves when the run stops:
   * finished, waiting for a retry, or taken over. Never rejects.
   */
  kick(orderId: string, leaseToken: string, subject?: SagaSubject): Promise<void> {
    return this.#track(orderId, () => this.#run(orderId, leaseToken, subject));
  }

  /** Waits for this process's current run of `orderId`, if there is one. */
  async settled(orderId: string): Promise<void> {
    await this.#running.get(orderId);
  }

  /** One poll round: claims due sagas and starts them. Exposed for tests. */
  async pollOnce(): Promise<number> {
    const room = this.#settings.concurrency - this.#polled;
    if (room <= 0) return 0;
    const claimed = await this.#claimDue(room);
    this.#claimedTotal += claimed.length;
    for (const { orderId, leaseToken } of claimed) {
      this.#polled++;
      void this.#track(orderId, () => this.#run(orderId, leaseToken)).finally(() => this.#polled--);
    }
    return claimed.length;
  }

  #schedule(ms: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.pollOnce()
        .then((n) => this.#schedule(n > 0 && this.#polled < this.#settings.concurrency ? 0 : this.#settings.pollIntervalMs))
        .catch((err) => {
          this.#log.warn({ err }, 'saga poll failed');
          this.#schedule(this.#settings.pollIntervalMs);
        });
    }, ms);
    this.#timer.unref?.();
  }

  #track(orderId: string, fn: () => Promise<void>): Promise<void> {
    // Detach from the inbound call (PlaceOrder, CancelOrder): its deadline and
    // cancellation must not reach downstream calls made after it answered.
    const run = runWithCallContext({ header: new Headers() }, fn)
      .catch((err) => this.#log.error({ err, orderId }, 'saga run failed; it will be retried after its lease'))
      .finally(() => {
        if (this.#running.get(orderId) === run) this.#running.delete(orderId);
      });
    this.#running.set(orderId, run);
    return run;
  }

  /**
   * Claims up to `limit` due sagas: one statement, skipping rows other replicas hold.
   * A row that still carries a lease was left by a worker that died (or hung) mid-step;
   * if it was in confirm, that worker may have sent CommitReservation without storing
   * so, hence it is taken over as 'commit' (domain.ts: it can only go forward now).
   */
  async #claimDue(limit: number): Promise<{ orderId: string; leaseToken: string }[]> {
    const rows = resultRows<{ order_id: string; lease_token: string }>(
      await this.#db.execute(sql`
        with due as (
          select order_id, lease_token is not null as abandoned from ${sagas}
          where step <> 'done' and next_run_at <= now()
          order by next_run_at
          limit ${limit}
          for update skip locked)
        update ${sagas} s set
          lease_token = gen_random_uuid(),
          next_run_at = now() + ${this.#settings.leaseMs} * interval '1 millisecond',
          step = case when s.step = 'confirm' and due.abandoned then 'commit' else s.step end
        from due where s.order_id = due.order_id
        returning s.order_id, s.lease_token`),
    );
    return rows.map((r) => ({ orderId: r.order_id, leaseToken: r.lease_token }));
  }

  async #load(orderId: string): Promise<SagaSubject | undefined> {
    const [row] = await this.#db
      .select({
        orderId: orders.id,
        userId: orders.userId,
        currency: orders.currency,
        totalMinor: orders.totalMinor,
        paymentToken: sagas.paymentToken,
        step: sagas.step,
        attempt: sagas.attempt,
        deadlineAt: sagas.deadlineAt,
        cancelReason: sagas.cancelReason,
        placedAt: orders.createTime,
        orderStatus: orders.status,
      })
      .from(sagas)
      .innerJoin(orders, eq(orders.id, sagas.orderId))
      .where(eq(sagas.orderId, orderId));
    if (!row) return undefined;
    const lines = resultRows<{ sku: string; quantity: string | number | bigint }>(
      await this.#db.execute(sql`select sku, quantity from "order".order_lines where order_id = ${orderId} order by position`),
    ).map((l) => ({ sku: l.sku, quantity: BigInt(l.quantity) }));
    return { ...row, lines };
  }

  async #run(orderId: string, leaseToken: string, preloaded?: SagaSubject): Promise<void> {
    const subject = preloaded ?? (await this.#load(orderId));
    if (!subject) return;
    try {
      for (;;) {
        if (subject.step === 'done') return;
        const now = Date.now();
        let t: SagaTransition;
        if (expiredBeforeRun({ ...subject, deadlineAt: subject.deadlineAt.getTime() }, now)) {
          t = { step: 'compensate', attempt: 0, delayMs: 0, lastError: 'saga deadline passed', cancelReason: REASON_TIMEOUT };
        } else {
          const outcome = await this.#withHeartbeat(orderId, leaseToken, () => this.#runStep(subject));
          t = nextTransition(
            {
              step: subject.step,
              attempt: subject.attempt,
              deadlineAt: subject.deadlineAt.getTime(),
              finalBy: subject.placedAt.getTime() + this.#settings.finalWithinMs,
              orderFinal: subject.orderStatus !== 'PENDING',
            },
            outcome,
            Date.now(),
            this.#settings.retry,
          );
          if (outcome.kind !== 'ok') {
            this.#log.info({ orderId, step: subject.step, outcome, next: t.step, delayMs: t.delayMs }, 'saga step did not succeed');
          }
          if (t.step === 'compensate' && subject.step === 'commit' && subject.orderStatus === 'CONFIRMED') {
            // domain.ts' one residual case: settled CONFIRMED, then the reservation was released
            // before the commit landed (inventory away for longer than RESERVATION_TTL).
            this.#log.error(
              { orderId, outcome },
              'saga: order settled CONFIRMED but its reservation was released before the commit; refunding and releasing, the order needs a person',
            );
          }
        }
        const done = subject.step;
        if (mustStore(done, t)) await this.#store(subject, leaseToken, t);
        if (t.cancelReason !== undefined) subject.cancelReason = t.cancelReason;
        if (t.settle) {
          subject.orderStatus = t.settle;
          this.#log.warn(
            { orderId, status: t.settle, step: t.step, last_error: t.lastError, final_within_ms: this.#settings.finalWithinMs },
            'saga: order settled at its bound; obligations left keep retrying in the background',
          );
        } else if (t.finalStatus && subject.orderStatus !== 'PENDING') {
          this.#log.info({ orderId, status: subject.orderStatus, step: done }, 'saga: obligations of a settled order completed');
        }
        if (t.step !== done || t.finalStatus) this.#crashHook(done, t);
        subject.step = t.step;
        subject.attempt = t.attempt;
        if (t.delayMs > 0) return; // the poller picks it up when due
      }
    } catch (err) {
      if (err instanceof LeaseLost) return;
      throw err;
    }
  }

  /**
   * Keeps the lease alive while a step's calls take long (a slow card, a
   * downstream retrying): every third of the lease, push next_run_at on, as
   * long as the lease is still ours. So the lease can be short (a crashed
   * replica's sagas resume soon) without a slow step being taken over
   * mid-call by another worker.
   */
  async #withHeartbeat<T>(orderId: string, leaseToken: string, fn: () => Promise<T>): Promise<T> {
    const every = Math.max(50, Math.floor(this.#settings.leaseMs / 3));
    const timer = setInterval(() => {
      this.#db
        .update(sagas)
        .set({ nextRunAt: sql`now() + ${this.#settings.leaseMs} * interval '1 millisecond'` })
        .where(and(eq(sagas.orderId, orderId), eq(sagas.leaseToken, leaseToken)))
        .catch((err) => this.#log.warn({ err, orderId }, 'saga lease renewal failed'));
    }, every);
    try {
      return await fn();
    } finally {
      clearInterval(timer);
    }
  }

  /** Test hook: die right after step `done` took effect (and its transition was stored, when it is), as a crash would. */
  #crashHook(done: SagaStep, t: SagaTransition): void {
    if (this.#settings.crashAfter && this.#settings.crashAfter === done) {
      this.#log.warn({ step: done, next: t.step }, 'SAGA_CRASH_AFTER: killing this process');
      process.kill(process.pid, 'SIGKILL');
    }
  }

  async #runStep(s: SagaSubject): Promise<StepOutcome> {
    try {
      switch (s.step) {
        case 'reserve':
          return await this.#reserve(s);
        case 'authorize':
          return await this.#authorize(s);
        case 'confirm':
        case 'commit':
          return await this.#confirm(s);
        case 'compensate':
          return await this.#compensate(s);
        case 'done':
          return { kind: 'ok' };
      }
    } catch (err) {
      const e = ConnectError.from(err);
      const error = `${s.step}: ${Code[e.code]}: ${e.rawMessage}`;
      if (isTransient(e.code)) return { kind: 'transient', error };
      return { kind: 'refused', reason: refusalReason(s.step, e) };
    }
  }

  async #reserve(s: SagaSubject): Promise<StepOutcome> {
    await this.#ports.inventory.reserveStock({ reservationId: s.orderId, lines: s.lines });
    return { kind: 'ok' };
  }

  async #authorize(s: SagaSubject): Promise<StepOutcome> {
    const { payment } = await this.#ports.payment.authorizePayment({
      orderId: s.orderId,
      userId: s.userId,
      amount: money(s.currency, s.totalMinor),
      cardToken: s.paymentToken,
    });
    switch (payment?.status) {
      case PaymentStatus.AUTHORIZED:
      case PaymentStatus.CAPTURED:
        return { kind: 'ok' };
      case PaymentStatus.DECLINED:
        return { kind: 'refused', reason: REASON_PAYMENT_DECLINED };
      default:
        // VOIDED/REFUNDED: the payment was undone (a cancellation won the race).
        return { kind: 'refused', reason: `payment ${payment ? PaymentStatus[payment.status].toLowerCase() : 'missing'}` };
    }
  }

  /**
   * Capture first, then commit: a capture that fails for good is undone by
   * the compensation's refund/void and release, while a committed reservation
   * could not be taken back. A commit refused here means the reservation ran
   * out (expired): the saga compensates, refunding the capture. A commit that got no
   * answer is reported as `commitSent`: it may have landed (the saga moves to 'commit').
   * 'commit' repeats the capture too (it answers CAPTURED again): a saga taken over from
   * a dead worker does not know whether its capture went through.
   */
  async #confirm(s: SagaSubject): Promise<StepOutcome> {
    await this.#ports.payment.capturePayment({ orderId: s.orderId });
    try {
      await this.#ports.inventory.commitReservation({ reservationId: s.orderId });
    } catch (err) {
      const e = ConnectError.from(err);
      if (isTransient(e.code)) return { kind: 'transient', error: `${s.step}: ${Code[e.code]}: ${e.rawMessage}`, commitSent: true };
      throw err;
    }
    return { kind: 'ok' };
  }

  /**
   * Undo both, always: each is idempotent and leaves a tombstone when there was nothing to
   * undo. Both are asked even when one fails, so stock comes back while payment is down
   * (and the other way round); the step is done when both have answered.
   */
  async #compensate(s: SagaSubject): Promise<StepOutcome> {
    const reason = s.cancelReason ?? 'cancelled';
    const [refund, release] = await Promise.allSettled([
      this.#ports.payment.refundPayment({ orderId: s.orderId, reason }),
      this.#ports.inventory.releaseReservation({ reservationId: s.orderId, reason }),
    ]);
    if (refund.status === 'rejected') throw refund.reason;
    if (release.status === 'rejected') throw release.reason;
    return { kind: 'ok' };
  }

  /** Stores a transition under our lease; final ones also move the order and write its event. */
  async #store(s: SagaSubject, leaseToken: string, t: SagaTransition): Promise<void> {
    if (t.settle) return this.#settle(s, leaseToken, t, t.settle);
    if (!t.finalStatus) {
      const keepLease = t.delayMs === 0 && t.step !== 'done';
      const store = {
        orderId: s.orderId,
        leaseToken,
        step: t.step,
        attempt: t.attempt,
        runInMs: keepLease ? this.#settings.leaseMs : t.delayMs,
        nextLeaseToken: keepLease ? leaseToken : null,
        lastError: t.lastError ?? null,
      };
      if (t.cancelReason === undefined) {
        if (!(await this.#steps.store(store))) throw new LeaseLost();
        return;
      }
      // With a cancel reason (not the happy path): a statement of its own.
      const updated = await runStatement(this.#db, STORE_STEP_AND_REASON, [
        store.step,
        store.attempt,
        store.runInMs,
        store.nextLeaseToken,
        store.lastError,
        store.orderId,
        store.leaseToken,
        t.cancelReason,
      ]);
      if (updated.length === 0) throw new LeaseLost();
      return;
    }
    const status = t.finalStatus;
    const reason = status === 'CANCELLED' ? (s.cancelReason ?? t.cancelReason ?? 'cancelled') : '';
    const event = this.#finalEvent(s, status, reason);
    const done = await this.#finisher.finish({ orderId: s.orderId, leaseToken, status, cancelReason: reason, lastError: t.lastError, event });
    if (!done.lease) throw new LeaseLost();
    if (done.moved) this.#changes.changed(s.orderId, { status, cancelReason: reason, updateTime: done.updateTime! }, s.userId);
  }

  /** The bound passed: the order goes final with its event, the saga stays on `t.step` (ours when it goes on at once). */
  async #settle(s: SagaSubject, leaseToken: string, t: SagaTransition, status: 'CONFIRMED' | 'CANCELLED'): Promise<void> {
    const reason = status === 'CANCELLED' ? (t.cancelReason ?? s.cancelReason ?? REASON_TIMEOUT) : '';
    const done = await settleOrder(this.#db, {
      orderId: s.orderId,
      leaseToken,
      step: t.step,
      attempt: t.attempt,
      dueInMs: t.delayMs === 0 ? this.#settings.leaseMs : t.delayMs,
      nextLeaseToken: t.delayMs === 0 ? leaseToken : null,
      lastError: t.lastError,
      sagaCancelReason: t.cancelReason ?? s.cancelReason,
      status,
      cancelReason: reason,
      event: this.#finalEvent(s, status, reason),
    });
    if (!done.lease) throw new LeaseLost();
    if (done.moved) this.#changes.changed(s.orderId, { status, cancelReason: reason, updateTime: done.updateTime! }, s.userId);
  }

  #finalEvent(s: SagaSubject, status: 'CONFIRMED' | 'CANCELLED', reason: string) {
    return status === 'CONFIRMED'
        ? outboxRow(
            OrderConfirmedSchema,
            create(OrderConfirmedSchema, { orderId: s.orderId, userId: s.userId, total: money(s.currency, s.totalMinor), occurTime: timestampNow() }),
            s.orderId,
            this.#settings.subjectPrefix,
          )
        : outboxRow(
            OrderCancelledSchema,
            create(OrderCancelledSchema, { orderId: s.orderId, userId: s.userId, reason, occurTime: timestampNow() }),
            s.orderId,
            this.#settings.subjectPrefix,
          );
  }

  /**
   * CancelOrder's half in the database: under the saga's and the order's row locks, decide
   * and, when the saga can still be stopped, take it over for compensation
   * with a fresh lease (a worker running a step of it loses its lease, so its
   * result is dropped). Returns the lease to kick, or why not.
   */
  async requestCancel(
    orderId: string,
    userId: string,
    reason: string,
  ): Promise<
    | { kind: 'not_found' }
    | { kind: 'final'; status: 'CONFIRMED' | 'CANCELLED' }
    | { kind: 'confirming' }
    | { kind: 'compensating' }
    | { kind: 'compensate'; leaseToken: string }
  > {
    return this.#db.transaction(async (tx) => {
      // The saga row first, then the order row: the order every writer of both takes them
      // (finishSaga, the batched finish and settleOrder update sagas, then orders). The other
      // way round, a cancel meeting a finishing saga deadlocked (saga-cancel.test.ts). Locking
      // another user's saga row for a moment reveals nothing: the answer is still not_found.
      const [saga] = await tx.select({ step: sagas.step }).from(sagas).where(eq(sagas.orderId, orderId)).for('update');
      const [o] = await tx
        .select({ status: orders.status })
        .from(orders)
        .where(and(eq(orders.id, orderId), eq(orders.userId, userId)))
        .for('update');
      if (!o) return { kind: 'not_found' as const };
      if (o.status !== 'PENDING') return { kind: 'final' as const, status: o.status };
      if (!saga || saga.step === 'confirm' || saga.step === 'commit' || saga.step === 'done') return { kind: 'confirming' as const };
      if (saga.step === 'compensate') return { kind: 'compensating' as const };
      const leaseToken = randomUUID();
      await tx
        .update(sagas)
        .set({
          step: 'compensate',
          attempt: 0,
          cancelReason: reason,
          leaseToken,
          lastError: null,
          nextRunAt: sql`now() + ${this.#settings.leaseMs} * interval '1 millisecond'`,
          updateTime: sql`now()`,
        })
        .where(eq(sagas.orderId, orderId));
      return { kind: 'compensate' as const, leaseToken };
    });
  }
}

/**
 * A transition that does not end the saga and records the cancel reason ($8): step-store.ts'
 * single store plus the reason. Fixed text, see statements.ts.
 */
const STORE_STEP_AND_REASON = `${STORE_STEP_SET}, cancel_reason = $8 ${STORE_STEP_WHERE}`;

/** Why a step that was refused for good cancels the order, in the words OrderCancelled uses. */
function refusalReason(step: SagaStep, e: ConnectError): string {
  if (step === 'reserve' && e.code === Code.FailedPrecondition) return REASON_OUT_OF_STOCK;
  if (step === 'authorize' && (e.code === Code.FailedPrecondition || e.code === Code.InvalidArgument)) return REASON_PAYMENT_DECLINED;
  if ((step === 'confirm' || step === 'commit') && e.code === Code.FailedPrecondition) return REASON_TIMEOUT;
  return `${step} failed: ${e.rawMessage}`;
}
