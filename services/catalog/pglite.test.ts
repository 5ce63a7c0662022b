// The one-command path a newcomer takes: no DATABASE_URL, so the service runs
// on embedded PGlite in DATA_DIR/catalog, migrates, seeds, answers a gRPC
// client over TCP and exits 0 on SIGTERM. Runs the real process (tsx main.ts).
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Health, HealthCheckResponse_ServingStatus as Status } from '../../gen/grpc/health/v1/health_pb.js';
import { CatalogService } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { closeMeshClients, createMeshClient } from '../../mesh/client.js';
import { freePort } from '../../mesh/testing/index.js';

const root = new URL('../..', import.meta.url).pathname;

test('without DATABASE_URL the catalog migrates and serves on PGlite, and stops cleanly on SIGTERM', async (t) => {
  t.timeout(120_000); // PGlite's first start runs initdb in WebAssembly: seconds, more on a busy machine.
  const dataDir = mkdtempSync(join(tmpdir(), 'pm-catalog-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...process.env, DATA_DIR: dataDir, PORT: String(port), SEED_CATALOG: 'true' };
  delete env.DATABASE_URL;

  const child = spawn(process.execPath, ['--import=tsx', 'services/catalog/main.ts'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  // The JSON logs (pino) go to stdout, Node's own warnings to stderr: read both.
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });

  // Wait for the "listening" line (or an early exit).
  await new Promise<void>((resolve, reject) => {
    const check = () => (output.includes('catalog listening') ? resolve() : undefined);
    child.stdout.on('data', check);
    child.stderr.on('data', check);
    exited.then((code) => reject(new Error(`catalog exited with ${code} before listening:\n${output}`)));
  });
  t.regex(output, /"driver":"pglite"/);
  t.true(existsSync(join(dataDir, 'catalog', 'PG_VERSION')), 'data directory is DATA_DIR/catalog');

  const target = `127.0.0.1:${port}`;
  const health = await createMeshClient(Health, target).check({ service: CatalogService.typeName });
  t.is(health.status, Status.SERVING);
  const catalog = createMeshClient(CatalogService, target);
  const page = await catalog.listProducts({ category: 'tea', pageSize: 100 });
  t.true(page.products.length >= 5);
  const got = await catalog.getProduct({ sku: page.products[0]!.sku });
  t.deepEqual(got.product, page.products[0]);
  closeMeshClients();

  child.kill('SIGTERM');
  t.is(await exited, 0, output);
});
