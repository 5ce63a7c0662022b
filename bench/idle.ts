/**
 * What the shop's processes cost when little happens: the CPU each service burns per second
 * at rest, then the CPU one leaf RPC costs its server at a few call rates.
 *
 *   npx tsx bench/idle.ts [--seconds 10] [--rates 25,100,400]
 *
 * Starts the whole shop with its default settings (scripts/stack.ts, as bench/orders.ts does) on
 * a fresh database and NATS prefix, waits for it to settle, reads each service's CPU time (/proc/<pid>/stat, all threads) over
 * `--seconds` at rest, then calls catalog ListProducts (page of 5) one at a time at each
 * `--rates` calls per second and prints the catalog's CPU per call.
 *
 * Why it exists: below a few hundred calls per second a call costs its server several times
 * what it costs under load (on the 2-core VM of docs/performance.md, 2.5-3.5 ms at 25 calls/s
 * against 0.7-1.0 ms at 400/s). A process woken for one call runs on caches that the other
 * processes have since filled, and its per-second timers are paid whether it works or not.
 * That is why the order bench's CPU per order falls as the load rises and its batches grow.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createClient } from '@connectrpc/connect';
import { CatalogService } from '../gen/shop/catalog/v1/catalog_pb.js';
import { createMeshTransport } from '../mesh/client.js';
import { createTestDatabase, testNatsPrefix, testNatsUrl } from '../mesh/testing/index.js';
import { runSeeds, startStack } from '../scripts/stack.js';

const { values: args } = parseArgs({
  options: { seconds: { type: 'string', default: '10' }, rates: { type: 'string', default: '25,100,400' } },
});
const SECONDS = Number(args.seconds);
const RATES = args.rates.split(',').map(Number);
if (!(SECONDS > 0) || RATES.some((r) => !(r > 0))) throw new Error('--seconds and every --rates entry must be positive numbers');

/** User + system CPU of a process so far, in ms (clock ticks are 10 ms on Linux). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

process.stderr.write('starting the shop (fresh database, own NATS prefix)...\n');
const db = await createTestDatabase();
const env = { DATABASE_URL: db.url, NATS_URL: testNatsUrl(), NATS_SUBJECT_PREFIX: testNatsPrefix().subjectPrefix, LOG_LEVEL: 'warn' };
await runSeeds({ ...process.env, ...env });
const stack = await startStack({ env, readyTimeoutMs: 90_000 });
const transport = createMeshTransport({ target: stack.addr('catalog') });
const catalogClient = createClient(CatalogService, transport);
try {
  const services = [...stack.running.values()].map((s) => ({ name: s.name, pid: s.process.pid! }));
  await sleep(5000); // start-up work (migrations, stream creation, first registry round) settles
  const before = services.map((s) => cpuMs(s.pid));
  process.stderr.write(`at rest for ${SECONDS} s...\n`);
  await sleep(SECONDS * 1000);
  const atRest = services.map((s, i) => ({ name: s.name, msPerSecond: (cpuMs(s.pid) - before[i]) / SECONDS }));
  console.log(`at rest, CPU ms per second: ${atRest.map((s) => `${s.name} ${s.msPerSecond.toFixed(1)}`).join(', ')} (total ${atRest.reduce((a, s) => a + s.msPerSecond, 0).toFixed(1)})`);

  const catalog = services.find((s) => s.name === 'catalog')!;
  const perCall: Record<string, number> = {};
  for (const rate of RATES) {
    const calls = Math.round(rate * SECONDS);
    const start = cpuMs(catalog.pid);
    const t0 = Date.now();
    for (let i = 0; i < calls; i++) {
      const wait = t0 + (i * 1000) / rate - Date.now();
      if (wait > 0) await sleep(wait);
      await catalogClient.listProducts({ pageSize: 5 });
    }
    const achieved = calls / ((Date.now() - t0) / 1000);
    perCall[rate] = (cpuMs(catalog.pid) - start) / calls;
    console.log(`catalog ListProducts at ${rate} calls/s (achieved ${achieved.toFixed(0)}): ${perCall[rate].toFixed(2)} ms of catalog CPU per call`);
  }
  console.log(JSON.stringify({ seconds: SECONDS, at_rest_ms_per_s: Object.fromEntries(atRest.map((s) => [s.name, s.msPerSecond])), catalog_ms_per_call: perCall }));
} finally {
  transport.close();
  await stack.stop();
  await db.drop();
}
