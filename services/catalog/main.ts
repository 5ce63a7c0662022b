/**
 * The catalog service process: config -> database (migrated) -> gRPC server
 * (CatalogService + health + reflection) -> graceful shutdown.
 *
 *   npm run start:catalog          PORT (5002), DATABASE_URL (unset = PGlite in DATA_DIR/catalog), LOG_LEVEL, ...
 */
import { pathToFileURL } from 'node:url';
import { CatalogService } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { boolean, duration, loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { databaseUnavailableInterceptor, openDatabase, type MeshDatabase } from '../../mesh/db.js';
import { serve, startMeshServer, type MeshServer } from '../../mesh/server.js';
import { createShutdown } from '../../mesh/shutdown.js';
import { ProductRepository } from './repository.js';
import { catalogMigrations, seedCatalog } from './seed.js';
import { createCatalogService } from './service.js';

export const catalogSettings = {
  ...meshSettings,
  PORT: port(servicePorts.catalog, 'gRPC listen port of the catalog service'),
  SEED_CATALOG: boolean(false, 'Load the demo product list at start (idempotent)'),
  READINESS_INTERVAL: duration('5s', 'How often the health check pings the database'),
};
export type CatalogConfig = Config<typeof catalogSettings>;

export interface Catalog {
  server: MeshServer;
  database: MeshDatabase;
  /** Stops the server (draining calls within graceMs) and then closes the database. */
  close(graceMs?: number): Promise<void>;
}

/** Starts the service in this process; tests call it with their own config. */
export async function startCatalog(config: CatalogConfig, host?: string): Promise<Catalog> {
  const database = await openDatabase({
    context: 'catalog',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: catalogMigrations,
  });
  try {
    const repo = new ProductRepository(database.db);
    if (config.SEED_CATALOG) await seedCatalog(repo);
    const server = await startMeshServer({
      name: 'catalog',
      host,
      port: config.PORT,
      services: [serve(CatalogService, createCatalogService(repo))],
      readiness: () => database.ping(),
      readinessIntervalMs: config.READINESS_INTERVAL,
      interceptors: [databaseUnavailableInterceptor()],
    });
    return {
      server,
      database,
      async close(graceMs = config.SHUTDOWN_GRACE) {
        await server.close(graceMs);
        await database.close();
      },
    };
  } catch (err) {
    await database.close();
    throw err;
  }
}

async function main(): Promise<void> {
  const config = loadConfig(catalogSettings);
  const catalog = await startCatalog(config);
  const shutdown = createShutdown();
  // Closers run in reverse: the server drains first, then the database closes.
  shutdown.add('db', () => catalog.database.close());
  shutdown.add('grpc', () => catalog.server.close(config.SHUTDOWN_GRACE));
  shutdown.listen();
  process.stderr.write(
    `${JSON.stringify({
      level: 'info',
      msg: 'catalog listening',
      address: catalog.server.address,
      driver: catalog.database.driver,
      migrations_applied: catalog.database.migrations?.applied.length ?? 0,
    })}\n`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(
      `${JSON.stringify({ level: 'fatal', msg: 'catalog failed to start', err: err instanceof Error ? err.message : String(err) })}\n`,
    );
    process.exit(1);
  });
}
