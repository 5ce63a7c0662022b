/**
 * What this host charges a process for waking up: the CPU of one round trip between two Node
 * processes over TCP loopback (one byte out, one byte echoed), back to back and then with the
 * caller sleeping between round trips, and the same for a fixed piece of pure computation.
 *
 *   npx tsx bench/wake-cost.ts [--gaps 0,1,5,20,40] [--trips 3000]
 *
 * Why it exists: the shop's CPU per order depends on its rate far more than its code does
 * (docs/performance.md, round 7: 37.6 ms of host CPU per order at 50 orders/s, 6.2 at 300/s).
 * This separates the host from the shop. Both sides' user + system CPU per round trip are
 * printed; if the round trip costs several times more when the processes sleep between trips
 * while the computation does not, the host makes a process that slept run slowly at first
 * (cold caches and TLB, the vCPU halted and rescheduled), and a service pays it on every
 * request that finds it idle. Batching pays it once per batch, which is why the shop's batches
 * and its CPU per order both follow the load.
 */
import { fork } from 'node:child_process';
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: { gaps: { type: 'string', default: '0,1,5,20,40' }, trips: { type: 'string', default: '3000' }, role: { type: 'string' } },
});

const cpuUs = (since?: NodeJS.CpuUsage) => {
  const c = process.cpuUsage(since);
  return c.user + c.system;
};

if (args.role === 'echo') {
  // The echo side: answers each byte, and on a message from the parent reports its CPU so far.
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    socket.on('data', (d) => socket.write(d));
  });
  server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as net.AddressInfo).port }));
  process.on('message', () => process.send!({ cpuUs: cpuUs() }));
} else {
  const GAPS = args.gaps.split(',').map(Number);
  const TRIPS = Number(args.trips);
  if (GAPS.some((g) => !(g >= 0)) || !(TRIPS > 0)) throw new Error('--gaps must be numbers >= 0 and --trips a positive number');

  const echo = fork(new URL(import.meta.url).pathname, ['--role', 'echo'], { execArgv: process.execArgv });
  const ask = <T>(msg?: object) =>
    new Promise<T>((resolve) => {
      echo.once('message', (m) => resolve(m as T));
      if (msg !== undefined) echo.send(msg);
    });
  const { port } = await ask<{ port: number }>();
  const socket = net.connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise((r) => socket.once('connect', r));
  const roundTrip = () =>
    new Promise<void>((resolve) => {
      socket.once('data', () => resolve());
      socket.write('x');
    });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const compute = () => {
    let x = 0;
    for (let i = 0; i < 200_000; i++) x += Math.sqrt(i ^ x);
    return x;
  };

  // Warm both sides' code paths first.
  for (let i = 0; i < 2000; i++) await roundTrip();
  for (let i = 0; i < 200; i++) compute();

  console.log('gap ms   round trip: caller µs  echo µs   computation: µs   (CPU per unit, user + system)');
  const rows: { gap: number; caller: number; echo: number; compute: number }[] = [];
  for (const gap of GAPS) {
    // Fewer units with a gap, so that every row takes a few seconds at most.
    const n = gap === 0 ? TRIPS : Math.max(50, Math.min(TRIPS, Math.round(4000 / gap)));
    const echoBefore = (await ask<{ cpuUs: number }>({})).cpuUs;
    const before = process.cpuUsage();
    for (let i = 0; i < n; i++) {
      await roundTrip();
      if (gap > 0) await sleep(gap);
    }
    const caller = cpuUs(before) / n;
    const echoCpu = ((await ask<{ cpuUs: number }>({})).cpuUs - echoBefore) / n;
    const m = gap === 0 ? 300 : Math.max(20, Math.round(1000 / gap));
    const computeBefore = process.cpuUsage();
    for (let i = 0; i < m; i++) {
      compute();
      if (gap > 0) await sleep(gap);
    }
    const computeUs = cpuUs(computeBefore) / m;
    rows.push({ gap, caller, echo: echoCpu, compute: computeUs });
    console.log(`${String(gap).padStart(6)}   ${caller.toFixed(0).padStart(20)}  ${echoCpu.toFixed(0).padStart(7)}   ${computeUs.toFixed(0).padStart(17)}`);
  }
  const base = rows.find((r) => r.gap === 0);
  const slowest = rows.at(-1)!;
  if (base && slowest.gap > 0) {
    console.log(
      `with ${slowest.gap} ms asleep between units: a round trip costs the caller ${(slowest.caller / base.caller).toFixed(1)}x and the echo ${(slowest.echo / base.echo).toFixed(1)}x what it costs back to back; the computation ${(slowest.compute / base.compute).toFixed(2)}x`,
    );
  }
  socket.destroy();
  echo.kill();
}
