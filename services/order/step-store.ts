/**
 * The saga's "store a step under our lease" update, coalesced across
 * concurrent sagas (mesh/coalesce): the sagas of one batched downstream call
 * (saga-ports.ts) finish that step together, and each used to pay its own
 * statement and commit (a WAL flush) to record it. A lone store goes alone as
 * before; those arriving while one is in flight go out as one UPDATE ... FROM
 * jsonb_to_recordset, one fixed text for any batch size (prepared once per
 * connection).
 *
 * Each row is still updated only under its own lease (order_id and
 * lease_token both match), so each saga hears its own answer: stored, or its
 * lease was lost. The batch is one statement, so one transaction: it commits
 * every row or none, and a failed batch fails each of its stores as a store
 * of its own would have (the saga retries or resumes from the stored step,
 * as after a crash). An order appears at most once per batch (an UPDATE ...
 * FROM with two source rows for one target row applies only one of them).
 */
import { Coalescer } from '../../mesh/coalesce.js';
import type { Database } from '../../mesh/db.js';
import { runStatement } from './statements.js';

export interface StepStore {
  orderId: string;
  /** The lease the saga holds: the row is written only while it still does. */
  leaseToken: string;
  step: string;
  attempt: number;
  /** The next step runs now + this many ms (the rest of the lease, or a retry's backoff). */
  runInMs: number;
  /** Who holds the row from now on: the caller (its lease token) or nobody (null). */
  nextLeaseToken: string | null;
  lastError: string | null;
}

/**
 * One store: the next step, when it runs and who holds it, under our lease ($7).
 * Fixed text, see statements.ts.
 */
export const STORE_STEP_SET = `update "order".sagas set step = $1, attempt = $2, next_run_at = now() + $3 * interval '1 millisecond',
    lease_token = $4::uuid, last_error = $5, update_time = now()`;
export const STORE_STEP_WHERE = `where order_id = $6::uuid and lease_token = $7::uuid returning order_id`;
const STORE_STEP = `${STORE_STEP_SET} ${STORE_STEP_WHERE}`;

/** Many stores in one statement: the same assignments and lease check per row. */
const STORE_STEPS = `update "order".sagas s set step = v.step, attempt = v.attempt,
    next_run_at = now() + v.run_in_ms * interval '1 millisecond', lease_token = v.next_lease_token,
    last_error = v.last_error, update_time = now()
  from jsonb_to_recordset($1::jsonb) as v(order_id uuid, lease_token uuid, step text, attempt integer,
    run_in_ms double precision, next_lease_token uuid, last_error text)
  where s.order_id = v.order_id and s.lease_token = v.lease_token
  returning s.order_id::text as order_id`;

function storeOne(db: Database, s: StepStore): Promise<unknown[]> {
  return runStatement(db, STORE_STEP, [s.step, s.attempt, s.runInMs, s.nextLeaseToken, s.lastError, s.orderId, s.leaseToken]);
}

/** Stores steps; `store` answers false when the lease was lost (the row was not ours any more). */
export function createStepStore(db: Database): { store(s: StepStore): Promise<boolean> } {
  const coalescer = new Coalescer<StepStore, boolean>({
    name: 'saga step store',
    sendOne: async (s) => (await storeOne(db, s)).length > 0,
    sendBatch: async (batch) => {
      const rows = batch.map((s) => ({
        order_id: s.orderId,
        lease_token: s.leaseToken,
        step: s.step,
        attempt: s.attempt,
        run_in_ms: s.runInMs,
        next_lease_token: s.nextLeaseToken,
        last_error: s.lastError,
      }));
      const stored = await runStatement<{ order_id: string }>(db, STORE_STEPS, [JSON.stringify(rows)]);
      const ids = new Set(stored.map((r) => r.order_id.toLowerCase()));
      return batch.map((s) => ids.has(s.orderId.toLowerCase()));
    },
    fits: (batch, next) => !batch.some((s) => s.orderId === next.orderId),
  });
  return { store: (s) => coalescer.call(s) };
}
