/**
 * Peak memory of the real catalog process under load.
 *
 * Starts services/catalog/main.ts as production does (telemetry entry, Postgres
 * at DATABASE_URL on a fresh database, seeded), loads GetProduct-by-SKU with
 * h2load, and prints calls/s with the process's resident memory at rest and its
 * peak (VmHWM from /proc, Linux only).
 *
 *   npx tsx bench/catalog-memory.ts            DURATION=15 CONNECTIONS=8 STREAMS=16
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { create, toBinary } from '@bufbuild/protobuf';
import { CatalogService, GetProductRequestSchema } from '../gen/shop/catalog/v1/catalog_pb.js';
import { HealthCheckResponse_ServingStatus } from '../gen/grpc/health/v1/health_pb.js';
import { closeMeshClients, createMeshClient } from '../mesh/client.js';
import { createTestDatabase, freePort, testNatsPrefix } from '../mesh/testing/index.js';
import { checkHealth, ROOT } from '../scripts/stack.js';

const seconds = Number(process.env.DURATION ?? 15);
const connections = Number(process.env.CONNECTIONS ?? 8);
const streams = Number(process.env.STREAMS ?? 16);
const SKU = 'COF-ETH-YIRG';

function memoryKiB(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: field('VmRSS'), peak: field('VmHWM') };
}

const mib = (kib: number) => `${(kib / 1024).toFixed(0)} MiB`;

async function main(): Promise<void> {
  const db = await createTestDatabase();
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', '--import', './mesh/telemetry/register.ts', 'services/catalog/main.ts'], {
    cwd: ROOT,
    stdio: 'ignore',
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: db.url,
      NATS_SUBJECT_PREFIX: testNatsPrefix().subjectPrefix,
      SEED_CATALOG: 'true',
      LOG_LEVEL: 'warn',
    },
  });
  try {
    for (let i = 0; (await checkHealth(`127.0.0.1:${port}`)) !== HealthCheckResponse_ServingStatus.SERVING; i++) {
      if (i > 300 || child.exitCode !== null) throw new Error('catalog did not become SERVING');
      await new Promise((r) => setTimeout(r, 100));
    }
    const catalog = createMeshClient(CatalogService, `127.0.0.1:${port}`);
    const { product } = await catalog.getProduct({ sku: SKU });
    if (product?.sku !== SKU) throw new Error(`GetProduct(${SKU}) answered ${product?.sku}`);
    closeMeshClients();
    const atRest = memoryKiB(child.pid!);

    const msg = toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { sku: SKU }));
    const frame = Buffer.alloc(5 + msg.byteLength);
    frame.writeUInt32BE(msg.byteLength, 1);
    Buffer.from(msg).copy(frame, 5);
    const body = join(mkdtempSync(join(tmpdir(), 'catalog-bench-')), 'get-product.bin');
    writeFileSync(body, frame);

    console.log(`catalog pid ${child.pid}: h2load -D ${seconds} -c ${connections} -m ${streams} GetProduct(sku)`);
    const { stdout } = await promisify(execFile)('h2load', [
      '-D', String(seconds), '-c', String(connections), '-m', String(streams), '-t', '1', '-d', body,
      '-H', 'content-type: application/grpc', '-H', 'te: trailers',
      `http://127.0.0.1:${port}/shop.catalog.v1.CatalogService/GetProduct`,
    ]);
    const rps = /finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(stdout)?.[1];
    const done = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed/.exec(stdout);
    const after = memoryKiB(child.pid!);
    console.log(`calls/s ${rps}  (succeeded ${done?.[1]}, failed ${done?.[2]})`);
    console.log(`catalog RSS at rest ${mib(atRest.rss)}, after load ${mib(after.rss)}, peak (VmHWM) ${mib(after.peak)}`);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    await db.drop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
