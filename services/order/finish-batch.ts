/**
 * finishSaga (writes.ts) coalesced across concurrent sagas (mesh/coalesce), as
 * step-store.ts does for step stores: the sagas of one batched commit call
 * end together, and each paid a statement and a commit for it. A lone finish
 * goes alone through finishSaga; those arriving while one is in flight go out
 * as one statement of one fixed text (jsonb_to_recordset), which per order
 * does what finishSaga does: close the saga row under its own lease, move the
 * order PENDING -> status only if that closed it, and write its event only if
 * the order moved. One statement is one transaction: every order of the
 * batch or none, and a failed batch fails each finish as its own statement
 * would have (the saga retries it, or resumes after a crash). An order
 * appears at most once per batch.
 */
import { Coalescer } from '../../mesh/coalesce.js';
import { announceCommitted } from '../../mesh/events/commit-signal.js';
import type { Database } from '../../mesh/db.js';
import { runStatement } from './statements.js';
import { finishSaga, SCHEMA, type FinishSaga } from './writes.js';

export type Finished = Awaited<ReturnType<typeof finishSaga>>;

const FINISH_SAGAS = `
      with v as (
        select * from jsonb_to_recordset($1::jsonb) as v(order_id uuid, lease_token uuid, last_error text,
          status text, cancel_reason text, event_id uuid, aggregate_id text, event_type text, subject text,
          payload text, headers jsonb, position integer)
      ), s as (
        update "order".sagas g set step = 'done', attempt = 0, next_run_at = now(), lease_token = null,
          last_error = v.last_error, update_time = now()
        from v where g.order_id = v.order_id and g.lease_token = v.lease_token
        returning g.order_id
      ), o as (
        update "order".orders x set status = v.status, cancel_reason = v.cancel_reason, update_time = now()
        from v where x.id = v.order_id and x.id in (select order_id from s) and x.status = 'PENDING'
        returning x.id, x.update_time
      ), e as (
        insert into "order".outbox (id, aggregate_id, event_type, subject, payload, headers)
        select v.event_id, v.aggregate_id, v.event_type, v.subject, decode(v.payload, 'base64'), v.headers
        from v join o on o.id = v.order_id
        order by v.position
      )
      select v.order_id::text as order_id, exists (select 1 from s where s.order_id = v.order_id) as lease,
        (select update_time from o where o.id = v.order_id) as update_time
      from v`;

type Row = { order_id: string; lease: boolean; update_time: string | Date | null };

/** Finishes sagas; each answer is what finishSaga would have answered for it. */
export function createSagaFinisher(db: Database): { finish(f: FinishSaga): Promise<Finished> } {
  const coalescer = new Coalescer<FinishSaga, Finished>({
    name: 'saga finish',
    sendOne: (f) => finishSaga(db, f),
    sendBatch: async (batch) => {
      const input = batch.map((f, position) => ({
        order_id: f.orderId,
        lease_token: f.leaseToken,
        last_error: f.lastError,
        status: f.status,
        cancel_reason: f.cancelReason,
        event_id: f.event.id,
        aggregate_id: f.event.aggregateId,
        event_type: f.event.eventType,
        subject: f.event.subject,
        payload: f.event.payload.toString('base64'),
        headers: JSON.parse(f.event.headers) as unknown,
        position,
      }));
      const rows = await runStatement<Row>(db, FINISH_SAGAS, [JSON.stringify(input)]);
      const byId = new Map(rows.map((r) => [r.order_id.toLowerCase(), r]));
      if (rows.some((r) => r.update_time !== null)) announceCommitted(db, SCHEMA);
      return batch.map((f) => {
        const r = byId.get(f.orderId.toLowerCase());
        if (!r) return new Error(`saga finish: no answer for order ${f.orderId}`);
        const moved = r.update_time !== null;
        return { lease: r.lease === true, moved, updateTime: moved ? new Date(r.update_time!) : undefined };
      });
    },
    fits: (batch, next) => !batch.some((f) => f.orderId === next.orderId),
  });
  return { finish: (f) => coalescer.call(f) };
}
