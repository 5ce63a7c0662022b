/**
 * How often each process ran, what a run cost and how long it waited for a CPU, from Linux's
 * per-thread scheduler statistics (`/proc/<pid>/task/<tid>/schedstat`: nanoseconds on a CPU,
 * nanoseconds runnable but waiting on a run queue, and the number of times it was given a CPU).
 * `bench/orders.ts` prints it per confirmed order for every process of the shop.
 *
 * Why it exists: on a shared 2-core host the shop's CPU per order is not a fixed cost of its
 * code. A Node process that wakes to handle a message pays hundreds of microseconds before it
 * has done any work (cold caches on a CPU other processes just used), so the CPU follows the
 * number of runs, and the runs per order follow the batch sizes. These are the figures that show
 * it: "order 2.2 runs per order at 620 µs each" says more about where the CPU goes than "order
 * 1.3 ms per order" does. The wait column is run-queue time: the part of an order's latency
 * spent ready to run while the CPUs were busy with other processes.
 *
 * Threads are counted per thread (a Node process's V8 and libuv helpers included), so a thread
 * that started in the window counts from zero and one that ended in it drops out.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** What the scheduler recorded for one thread, or a sum of threads. */
export interface RunTotals {
  /** Nanoseconds on a CPU. */
  cpuNs: number;
  /** Nanoseconds runnable, waiting on a run queue. */
  waitNs: number;
  /** Times the thread was given a CPU ("timeslices" in the kernel's words). */
  runs: number;
}

/** Parses one `schedstat` line: `<cpu ns> <wait ns> <timeslices>`. */
export function parseSchedstat(text: string): RunTotals {
  const fields = text.trim().split(/\s+/).map(Number);
  if (fields.length !== 3 || fields.some((n) => !Number.isFinite(n) || n < 0)) throw new Error(`not a schedstat line: ${JSON.stringify(text)}`);
  return { cpuNs: fields[0]!, waitNs: fields[1]!, runs: fields[2]! };
}

/** Every thread of one process by thread id; empty if the process is gone or not readable. */
export function readThreads(pid: number, procRoot = '/proc'): Map<string, RunTotals> {
  const out = new Map<string, RunTotals>();
  let tids: string[];
  try {
    tids = readdirSync(`${procRoot}/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      out.set(`${pid}/${tid}`, parseSchedstat(readFileSync(`${procRoot}/${pid}/task/${tid}/schedstat`, 'utf8')));
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

/** One snapshot: per name (a service, "postgres", ...), its threads by `pid/tid`. */
export type RunSnapshot = Map<string, Map<string, RunTotals>>;

/** Reads the threads of every process under its name; several pids may share a name (Postgres backends). */
export function runSnapshot(pidsByName: Map<string, number[]>, procRoot = '/proc'): RunSnapshot {
  const snap: RunSnapshot = new Map();
  for (const [name, pids] of pidsByName) {
    const threads = snap.get(name) ?? new Map<string, RunTotals>();
    for (const pid of pids) for (const [tid, totals] of readThreads(pid, procRoot)) threads.set(tid, totals);
    snap.set(name, threads);
  }
  return snap;
}

/** Per name, what its threads did between two snapshots (a thread new at the end counts from zero). */
export function runDelta(start: RunSnapshot, end: RunSnapshot): Map<string, RunTotals> {
  const out = new Map<string, RunTotals>();
  for (const [name, threads] of end) {
    const before = start.get(name) ?? new Map<string, RunTotals>();
    const sum: RunTotals = { cpuNs: 0, waitNs: 0, runs: 0 };
    for (const [tid, t] of threads) {
      const b = before.get(tid) ?? { cpuNs: 0, waitNs: 0, runs: 0 };
      sum.cpuNs += t.cpuNs - b.cpuNs;
      sum.waitNs += t.waitNs - b.waitNs;
      sum.runs += t.runs - b.runs;
    }
    out.set(name, sum);
  }
  return out;
}

export interface RunsPerOrder {
  /** Runs per order. */
  runs: number;
  /** Mean CPU of one run, µs. */
  cpuUsPerRun: number;
  /** Run-queue wait per order, ms. */
  waitMsPerOrder: number;
}

/** The per-order figures, largest CPU first, with an "all" row summing them. */
export function runsPerOrder(delta: Map<string, RunTotals>, orders: number): [string, RunsPerOrder][] {
  if (!(orders > 0)) return [];
  const rows = [...delta].filter(([, d]) => d.runs > 0).sort((a, b) => b[1].cpuNs - a[1].cpuNs);
  const all: RunTotals = { cpuNs: 0, waitNs: 0, runs: 0 };
  for (const [, d] of rows) {
    all.cpuNs += d.cpuNs;
    all.waitNs += d.waitNs;
    all.runs += d.runs;
  }
  const figures = (d: RunTotals): RunsPerOrder => ({
    runs: round(d.runs / orders, 2),
    cpuUsPerRun: round(d.cpuNs / d.runs / 1e3, 0),
    waitMsPerOrder: round(d.waitNs / orders / 1e6, 2),
  });
  return [...rows.map(([name, d]) => [name, figures(d)] as [string, RunsPerOrder]), ['all', figures(all)]];
}

/** One line for the bench's report. */
export function runReport(rows: [string, RunsPerOrder][]): string {
  if (rows.length === 0) return '';
  return (
    'runs per confirmed order (times a process got a CPU × mean CPU per run; run-queue wait per order): ' +
    rows.map(([name, r]) => `${name} ${r.runs} × ${r.cpuUsPerRun} µs (waited ${r.waitMsPerOrder} ms)`).join(', ')
  );
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
