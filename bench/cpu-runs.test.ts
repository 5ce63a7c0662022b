import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseSchedstat, readThreads, runDelta, runReport, runSnapshot, runsPerOrder } from './cpu-runs.js';

test('parseSchedstat reads cpu ns, wait ns and runs, and refuses anything else', (t) => {
  t.deepEqual(parseSchedstat('1430093 6012 3\n'), { cpuNs: 1430093, waitNs: 6012, runs: 3 });
  for (const bad of ['', '1 2', '1 2 3 4', 'a b c', '1 -2 3']) t.throws(() => parseSchedstat(bad), { message: /not a schedstat line/ });
});

/** A fake /proc: pid -> tid -> "cpu wait runs". */
function fakeProc(root: string, pids: Record<number, Record<number, string>>) {
  rmSync(root, { recursive: true, force: true });
  for (const [pid, tids] of Object.entries(pids))
    for (const [tid, line] of Object.entries(tids)) {
      mkdirSync(path.join(root, pid, 'task', tid), { recursive: true });
      writeFileSync(path.join(root, pid, 'task', tid, 'schedstat'), `${line}\n`);
    }
}

test('runDelta sums every thread of every pid under a name; a thread new in the window counts from zero, one that ended drops out', (t) => {
  const root = mkdtempSync(path.join(tmpdir(), 'cpu-runs-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const names = new Map([
    ['order', [10]],
    ['postgres', [20, 21]],
  ]);
  fakeProc(root, { 10: { 10: '1000 100 1', 11: '500 0 1' }, 20: { 20: '2000 0 2' }, 21: { 21: '50 5 1' } });
  const start = runSnapshot(names, root);
  // Thread 11 ended, 12 started; backend 21 is gone and 22 (not asked for) is ignored.
  fakeProc(root, { 10: { 10: '4000 300 4', 12: '700 70 7' }, 20: { 20: '2600 40 5' }, 22: { 22: '9 9 9' } });
  const delta = runDelta(start, runSnapshot(names, root));
  t.deepEqual(delta.get('order'), { cpuNs: 3000 + 700, waitNs: 200 + 70, runs: 3 + 7 });
  t.deepEqual(delta.get('postgres'), { cpuNs: 600, waitNs: 40, runs: 3 });
  t.deepEqual(readThreads(99, root), new Map(), 'a process that is gone has no threads');
});

test('runsPerOrder and runReport: runs per order, CPU per run, wait per order, largest CPU first, and an "all" row', (t) => {
  const delta = new Map([
    ['catalog', { cpuNs: 1_000_000, waitNs: 2_000_000, runs: 4 }],
    ['order', { cpuNs: 12_400_000, waitNs: 31_000_000, runs: 20 }],
    ['idle', { cpuNs: 0, waitNs: 0, runs: 0 }],
  ]);
  const rows = runsPerOrder(delta, 10);
  t.deepEqual(rows, [
    ['order', { runs: 2, cpuUsPerRun: 620, waitMsPerOrder: 3.1 }],
    ['catalog', { runs: 0.4, cpuUsPerRun: 250, waitMsPerOrder: 0.2 }],
    ['all', { runs: 2.4, cpuUsPerRun: 558, waitMsPerOrder: 3.3 }],
  ]);
  t.is(
    runReport(rows),
    'runs per confirmed order (times a process got a CPU × mean CPU per run; run-queue wait per order): ' +
      'order 2 × 620 µs (waited 3.1 ms), catalog 0.4 × 250 µs (waited 0.2 ms), all 2.4 × 558 µs (waited 3.3 ms)',
  );
  t.deepEqual(runsPerOrder(delta, 0), [], 'no orders, no figures');
  t.is(runReport([]), '');
});

// The real kernel: a child that sleeps between bits of work must show at least that many runs and
// some CPU. Skipped where there is no per-thread schedstat (not Linux, or a kernel without it).
const hasSchedstat = existsSync(`/proc/${process.pid}/task/${process.pid}/schedstat`);
(hasSchedstat ? test : test.skip)('on Linux, a process that wakes 50 times is seen running at least 50 times', async (t) => {
  // The child waits for "go", then does a bit of work 50 times with a 2 ms sleep between, says
  // "done" and waits to be killed: the window between the two snapshots holds exactly those wakes.
  const child = spawn(
    process.execPath,
    ['-e', `process.stdout.write('ready\\n'); process.stdin.once('data', () => { let k = 0, n = 0;
      const loop = () => { for (let i = 0; i < 1e5; i++) n += i; if (++k < 50) setTimeout(loop, 2); else process.stdout.write('done ' + (n > 0) + '\\n'); };
      loop(); });`],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  const line = (text: string) => new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => d.toString().includes(text) && resolve()));
  await line('ready');
  const names = new Map([['child', [child.pid!]]]);
  const start = runSnapshot(names);
  t.true(start.get('child')!.size >= 1, 'the child has threads to read');
  const done = line('done');
  child.stdin.write('go');
  await done;
  const delta = runDelta(start, runSnapshot(names)).get('child')!;
  t.true(delta.runs >= 50, `runs ${delta.runs}`);
  t.true(delta.cpuNs > 0, `cpu ${delta.cpuNs} ns`);
});
