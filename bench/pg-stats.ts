/**
 * What Postgres did for the bench's database over a window, per confirmed order:
 * `bench/orders.ts --pg-stats` takes a snapshot when it starts measuring and one
 * when it stops, and prints the difference divided by the confirmed orders.
 *
 *  - statements (pg_stat_statements, top level and nested): calls, execution and
 *    planning time, rows and shared blocks per order, grouped by the service's
 *    schema named in the text, and the statements that cost most;
 *  - commits and rollbacks (pg_stat_database), WAL records, bytes and flushes (pg_stat_wal);
 *  - tables read by sequential scan (pg_stat_user_tables), the sign of a missing index.
 *
 * Needs a server started with `shared_preload_libraries = pg_stat_statements` and the
 * extension created in the database (create it in template1 so every new database has
 * it); on any other server it prints why it is skipped. Run it against a private server
 * (see docs/performance.md), not a shared one: the WAL figures are server-wide.
 */
import type postgres from 'postgres';

interface StatementRow {
  queryid: string;
  query: string;
  calls: number;
  total_exec_time: number;
  total_plan_time: number;
  plans: number;
  rows: number;
  shared_blks_hit: number;
  shared_blks_read: number;
  shared_blks_dirtied: number;
  wal_records: number;
}
interface TableRow {
  relname: string;
  schemaname: string;
  seq_scan: number;
  seq_tup_read: number;
  idx_scan: number;
  n_tup_ins: number;
  n_tup_upd: number;
  n_tup_hot_upd: number;
  n_tup_del: number;
}
interface Snapshot {
  statements: Map<string, StatementRow>;
  tables: Map<string, TableRow>;
  database: Record<string, number>;
  wal: Record<string, number>;
}

export async function pgStatsAvailable(sql: postgres.Sql): Promise<string | undefined> {
  try {
    await sql`select 1 from pg_stat_statements limit 1`;
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

export async function pgStatsSnapshot(sql: postgres.Sql): Promise<Snapshot> {
  const statements = new Map<string, StatementRow>();
  const st = await sql<StatementRow[]>`
    select queryid::text || ':' || toplevel::text as queryid, query, calls::float8 as calls, total_exec_time, total_plan_time, plans::float8 as plans,
           rows::float8 as rows, shared_blks_hit::float8 as shared_blks_hit, shared_blks_read::float8 as shared_blks_read,
           shared_blks_dirtied::float8 as shared_blks_dirtied, wal_records::float8 as wal_records
      from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())`;
  for (const r of st) statements.set(r.queryid, r);
  const tables = new Map<string, TableRow>();
  const tt = await sql<TableRow[]>`
    select relname, schemaname, seq_scan::float8 as seq_scan, coalesce(seq_tup_read, 0)::float8 as seq_tup_read,
           coalesce(idx_scan, 0)::float8 as idx_scan, n_tup_ins::float8 as n_tup_ins, n_tup_upd::float8 as n_tup_upd,
           n_tup_hot_upd::float8 as n_tup_hot_upd, n_tup_del::float8 as n_tup_del
      from pg_stat_user_tables`;
  for (const r of tt) tables.set(`${r.schemaname}.${r.relname}`, r);
  const [database] = await sql<Record<string, number>[]>`
    select sessions::float8 as sessions, xact_commit::float8 as xact_commit, xact_rollback::float8 as xact_rollback, blks_hit::float8 as blks_hit,
           blks_read::float8 as blks_read, tup_returned::float8 as tup_returned, tup_fetched::float8 as tup_fetched
      from pg_stat_database where datname = current_database()`;
  const [wal] = await sql<Record<string, number>[]>`
    select wal_records::float8 as wal_records, wal_fpi::float8 as wal_fpi, wal_bytes::float8 as wal_bytes,
           wal_write::float8 as wal_write, wal_sync::float8 as wal_sync, wal_write_time, wal_sync_time from pg_stat_wal`;
  return { statements, tables, database: database!, wal: wal! };
}

/** Which service a statement belongs to: the schema its text names (else "other"). */
function serviceOf(query: string): string {
  const m = /"?(catalog|inventory|notification|order|payment|user)"?\./i.exec(query);
  return m ? m[1]!.toLowerCase() : /^(begin|commit|rollback)/i.test(query.trim()) ? 'tx' : 'other';
}

export function pgStatsReport(before: Snapshot, after: Snapshot, orders: number, top = 25): string {
  const per = (x: number) => x / orders;
  const lines: string[] = [];
  const rows: (StatementRow & { service: string })[] = [];
  for (const [id, a] of after.statements) {
    const b = before.statements.get(id);
    const d = {
      ...a,
      service: serviceOf(a.query),
      calls: a.calls - (b?.calls ?? 0),
      total_exec_time: a.total_exec_time - (b?.total_exec_time ?? 0),
      total_plan_time: a.total_plan_time - (b?.total_plan_time ?? 0),
      plans: a.plans - (b?.plans ?? 0),
      rows: a.rows - (b?.rows ?? 0),
      shared_blks_hit: a.shared_blks_hit - (b?.shared_blks_hit ?? 0),
      shared_blks_read: a.shared_blks_read - (b?.shared_blks_read ?? 0),
      shared_blks_dirtied: a.shared_blks_dirtied - (b?.shared_blks_dirtied ?? 0),
      wal_records: a.wal_records - (b?.wal_records ?? 0),
    };
    if (d.calls > 0) rows.push(d);
  }
  const top_level = rows.filter((r) => r.queryid.endsWith(':true'));
  const byService = new Map<string, { calls: number; exec: number; plan: number; blks: number }>();
  for (const r of top_level) {
    const s = byService.get(r.service) ?? { calls: 0, exec: 0, plan: 0, blks: 0 };
    s.calls += r.calls;
    s.exec += r.total_exec_time;
    s.plan += r.total_plan_time;
    s.blks += r.shared_blks_hit + r.shared_blks_read;
    byService.set(r.service, s);
  }
  const f = (x: number, d = 2) => x.toFixed(d);
  lines.push(`pg_stat_statements per confirmed order (${orders} orders; top level; exec/plan in ms):`);
  let calls = 0;
  let exec = 0;
  let plan = 0;
  for (const [name, s] of [...byService].sort((a, b) => b[1].exec - a[1].exec)) {
    lines.push(`  ${name.padEnd(13)} calls ${f(per(s.calls)).padStart(6)}  exec ${f(per(s.exec), 3).padStart(7)}  plan ${f(per(s.plan), 3).padStart(7)}  shared blks ${f(per(s.blks), 1)}`);
    calls += s.calls;
    exec += s.exec;
    plan += s.plan;
  }
  lines.push(`  ${'all'.padEnd(13)} calls ${f(per(calls)).padStart(6)}  exec ${f(per(exec), 3).padStart(7)}  plan ${f(per(plan), 3).padStart(7)}`);
  lines.push(`top statements by exec time (per order: calls, exec ms, mean µs, plans, rows, blks hit/read/dirtied, wal records; * = nested):`);
  for (const r of [...rows].sort((a, b) => b.total_exec_time - a.total_exec_time).slice(0, top)) {
    const text = r.query.replace(/\s+/g, ' ').slice(0, 150);
    lines.push(
      `  ${r.queryid.endsWith(':true') ? ' ' : '*'}${f(per(r.calls)).padStart(5)} ${f(per(r.total_exec_time), 3).padStart(6)} ${f((r.total_exec_time / r.calls) * 1000, 0).padStart(5)}µs ` +
        `${f(per(r.plans)).padStart(5)} ${f(per(r.rows), 1).padStart(5)} ${f(r.shared_blks_hit / r.calls, 1)}/${f(r.shared_blks_read / r.calls, 1)}/${f(r.shared_blks_dirtied / r.calls, 1)} ${f(r.wal_records / r.calls, 1)}  ${text}`,
    );
  }
  const db = Object.fromEntries(Object.keys(after.database).map((k) => [k, f(per(after.database[k]! - before.database[k]!), 1)]));
  lines.push(`database per order: ${JSON.stringify(db)}`);
  const wal = Object.fromEntries(Object.keys(after.wal).map((k) => [k, f(per(after.wal[k]! - before.wal[k]!), 2)]));
  lines.push(`WAL per order (server-wide): ${JSON.stringify(wal)}`);
  lines.push(`tables (per order: seq scans, rows read by them, index scans, ins/upd(hot)/del):`);
  for (const [name, a] of after.tables) {
    const b = before.tables.get(name);
    const d = (k: keyof TableRow) => (a[k] as number) - ((b?.[k] as number | undefined) ?? 0);
    if (d('seq_scan') + d('idx_scan') + d('n_tup_ins') + d('n_tup_upd') === 0) continue;
    lines.push(
      `  ${name.padEnd(36)} seq ${f(per(d('seq_scan'))).padStart(6)} (${f(per(d('seq_tup_read')), 1).padStart(7)} rows)  idx ${f(per(d('idx_scan'))).padStart(6)}  ` +
        `ins ${f(per(d('n_tup_ins')))} upd ${f(per(d('n_tup_upd')))}(${f(per(d('n_tup_hot_upd')))}) del ${f(per(d('n_tup_del')))}`,
    );
  }
  return lines.join('\n');
}
