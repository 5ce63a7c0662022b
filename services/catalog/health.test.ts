// Readiness follows the database: SERVING while Postgres answers, NOT_SERVING
// once it goes away, SERVING again when it is back. Its own file and database,
// because taking the database away would disturb other tests.
import test from 'ava';
import { Code, ConnectError } from '@connectrpc/connect';
import { Health, HealthCheckResponse_ServingStatus as Status } from '../../gen/grpc/health/v1/health_pb.js';
import { CatalogService } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { closeMeshClients, createMeshClient } from '../../mesh/client.js';
import { startServiceForTest, withAdmin } from '../../mesh/testing/index.js';
import { catalogSettings, startCatalog } from './main.js';

test('health reports NOT_SERVING while the database is unreachable, and SERVING when it returns', async (t) => {
  const svc = await startServiceForTest(catalogSettings, (config) => startCatalog(config, '127.0.0.1'), { READINESS_INTERVAL: '100ms' });
  const catalog = svc.app;
  const testDb = svc.database!; // Postgres, not PGlite: the test takes it away
  t.teardown(async () => {
    closeMeshClients();
    await withAdmin((sql) => sql.unsafe(`alter database "${testDb.name}" allow_connections true`)).catch(() => {});
    await svc.close();
  });
  const health = createMeshClient(Health, catalog.server.address);
  const catalogClient = createMeshClient(CatalogService, catalog.server.address);
  const service = CatalogService.typeName;

  /** Polls Check until it reports `want` (the probe runs every 100 ms); fails the test by timeout otherwise. */
  const until = async (want: Status) => {
    for (;;) {
      const [server, svc] = await Promise.all([health.check({ service: '' }), health.check({ service })]);
      if (server.status === want && svc.status === want) return;
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  await until(Status.SERVING);
  t.pass('SERVING at start');

  // The database goes away: no new connections, existing ones killed.
  await withAdmin(async (sql) => {
    await sql.unsafe(`alter database "${testDb.name}" allow_connections false`);
    await sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${testDb.name}`;
  });
  await until(Status.NOT_SERVING);
  t.pass('NOT_SERVING without a database');
  // Calls that need it fail UNAVAILABLE (retryable), without leaking SQL.
  const err = await t.throwsAsync(catalogClient.getProduct({ sku: 'ANY-001' }), { instanceOf: ConnectError });
  t.is(err!.code, Code.Unavailable);
  t.notRegex(err!.message, /select|catalog\.products/i);

  await withAdmin((sql) => sql.unsafe(`alter database "${testDb.name}" allow_connections true`));
  await until(Status.SERVING);
  t.pass('SERVING again');
  await t.throwsAsync(catalogClient.getProduct({ sku: 'ANY-001' }), { message: /not found/ });
});
