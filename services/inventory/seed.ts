/**
 * Demo stock for the catalog's seed products (services/catalog/seed/products.json,
 * the catalog engineer's list, read here so the two never drift apart).
 * Each SKU gets a deterministic quantity between 20 and 200 units; a SKU that
 * already has a stock row is left alone, so re-running never undoes sales.
 *
 *   npm run seed:inventory    DATABASE_URL set: that server; unset: PGlite in DATA_DIR/inventory
 *                             (with PGlite, stop the inventory service first: one process per data
 *                             directory; or start the service with SEED_INVENTORY=true instead)
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { loadConfig, meshSettings } from '../../mesh/config.js';
import { openDatabase } from '../../mesh/db.js';
import { validateSku } from './domain.js';
import { InventoryStore } from './store.js';

export const inventoryMigrations = new URL('./migrations', import.meta.url).pathname;
const CATALOG_SEED = new URL('../catalog/seed/products.json', import.meta.url);

/** The SKUs of the catalog's seed list. */
export function catalogSeedSkus(): string[] {
  const products = JSON.parse(readFileSync(CATALOG_SEED, 'utf8')) as Array<{ sku: string }>;
  return products.map((p) => p.sku);
}

/** 20-200 units, derived from the SKU so every machine seeds the same numbers. */
export function seedQuantity(sku: string): number {
  return 20 + (createHash('sha256').update(sku).digest().readUInt32BE(0) % 181);
}

export interface SeedResult {
  stocked: number;
  unchanged: number;
}

export async function seedInventory(store: InventoryStore, skus = catalogSeedSkus()): Promise<SeedResult> {
  const result: SeedResult = { stocked: 0, unchanged: 0 };
  for (const sku of skus) {
    validateSku(sku);
    if (await store.stockIfAbsent(sku, seedQuantity(sku))) result.stocked++;
    else result.unchanged++;
  }
  return result;
}

async function main(): Promise<void> {
  const config = loadConfig(meshSettings);
  const database = await openDatabase({
    context: 'inventory',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: inventoryMigrations,
  });
  try {
    const result = await seedInventory(new InventoryStore({ db: database.db, reservationTtlMs: 0 }));
    process.stdout.write(`inventory seed: ${result.stocked} SKUs stocked, ${result.unchanged} already stocked\n`);
  } finally {
    await database.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`inventory seed failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
