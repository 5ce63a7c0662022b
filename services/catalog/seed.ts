/**
 * The demo product list (seed/products.json, 58 products in 8 categories,
 * prices in EUR cents), loaded through the same validation as CreateProduct.
 * Idempotent: a SKU that exists is left alone, so re-running changes nothing.
 *
 *   npm run seed:catalog     DATABASE_URL set: that server; unset: PGlite in DATA_DIR/catalog
 *                            (with PGlite, stop the catalog service first: one process per data directory;
 *                            or start the service with SEED_CATALOG=true instead)
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { create } from '@bufbuild/protobuf';
import { CreateProductRequestSchema, type Product } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { loadConfig, meshSettings } from '../../mesh/config.js';
import { openDatabase } from '../../mesh/db.js';
import { sameContent, validateNewProduct } from './domain.js';
import { ProductRepository } from './repository.js';

/** The drizzle-kit migrations of the catalog schema (main.ts and the seed both open the database). */
export const catalogMigrations = fileURLToPath(new URL('./migrations', import.meta.url));

type SeedProduct = Omit<Product, '$typeName' | 'id' | 'createTime' | 'price'> & {
  price: { currencyCode: string; amountMinor: number };
};

export function loadSeedProducts(): SeedProduct[] {
  return JSON.parse(readFileSync(new URL('./seed/products.json', import.meta.url), 'utf8')) as SeedProduct[];
}

export interface SeedResult {
  inserted: number;
  unchanged: number;
  /** SKUs that exist with other content than the seed file's (left as they are). */
  differing: string[];
}

export async function seedCatalog(repo: ProductRepository, products = loadSeedProducts()): Promise<SeedResult> {
  const wanted = products.map((p) =>
    validateNewProduct(
      create(CreateProductRequestSchema, {
        product: { ...p, price: { currencyCode: p.price.currencyCode, amountMinor: BigInt(p.price.amountMinor) } },
      }),
    ),
  );
  // One statement inserts what is missing; the unique SKU index makes it safe to race.
  const inserted = new Set((await repo.insertManyIfAbsent(wanted)).map((row) => row.sku));
  const rest = wanted.filter((p) => !inserted.has(p.sku));
  const existing = new Map((await repo.findBySkus(rest.map((p) => p.sku))).map((row) => [row.sku, row]));
  const differing = rest.filter((p) => !sameContent(existing.get(p.sku) ?? { ...p, name: '' }, p)).map((p) => p.sku);
  return { inserted: inserted.size, unchanged: rest.length - differing.length, differing };
}

async function main(): Promise<void> {
  const config = loadConfig(meshSettings);
  const database = await openDatabase({
    context: 'catalog',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: catalogMigrations,
  });
  try {
    const result = await seedCatalog(new ProductRepository(database.db));
    process.stdout.write(`${JSON.stringify({ msg: 'catalog seeded', driver: database.driver, ...result })}\n`);
  } finally {
    await database.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`seed:catalog failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
