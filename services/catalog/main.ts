/**
 * The catalog service process: the catalog database, CatalogService, and the
 * shared process wiring of mesh/app.ts (health, registry, graceful shutdown).
 *
 *   npm run start:catalog          PORT (5002), DATABASE_URL (unset = PGlite in DATA_DIR/catalog), LOG_LEVEL, ...
 */
import { CatalogService } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { runServiceMain, serviceAppSettings, startServiceApp, type ServiceApp } from '../../mesh/app.js';
import { boolean, loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { serve } from '../../mesh/server.js';
import { ProductRepository } from './repository.js';
import { catalogMigrations, seedCatalog } from './seed.js';
import { createCatalogService } from './service.js';

export const catalogSettings = {
  ...meshSettings,
  ...serviceAppSettings,
  PORT: port(servicePorts.catalog, 'gRPC listen port of the catalog service'),
  SEED_CATALOG: boolean(false, 'Load the demo product list at start (idempotent)'),
};
export type CatalogConfig = Config<typeof catalogSettings>;

export type Catalog = ServiceApp;

/** Starts the service in this process; tests call it with their own config. */
export function startCatalog(config: CatalogConfig, host?: string): Promise<Catalog> {
  return startServiceApp({
    name: 'catalog',
    config,
    host,
    migrationsFolder: catalogMigrations,
    // No events: the catalog publishes none and reacts to none.
    setup: async ({ db }) => {
      const repo = new ProductRepository(db);
      if (config.SEED_CATALOG) await seedCatalog(repo);
      return { services: [serve(CatalogService, createCatalogService(repo))] };
    },
  });
}

runServiceMain(import.meta.url, () => startCatalog(loadConfig(catalogSettings)));
