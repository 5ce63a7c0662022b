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
import { pathToFileURL } from 'node:url';
import { create } from '@bufbuild/protobuf';
import { CreateProductRequestSchema, type Product } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { loadConfig, meshSettings } from '../../mesh/config.js';
import { openDatabase } from '../../mesh/db.js';
import { sameContent, validateNewProduct } from './domain.js';
import { ProductRepository } from './repository.js';

export const catalogMigrations = new URL('./migrations', import.meta.url).pathname;

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
  const result: SeedResult = { inserted: 0, unchanged: 0, differing: [] };
  for (const p of products) {
    const product = validateNewProduct(
      create(CreateProductRequestSchema, {
        product: { ...p, price: { currencyCode: p.price.currencyCode, amountMinor: BigInt(p.price.amountMinor) } },
      }),
    );
    if (await repo.insertIfAbsent(product)) {
      result.inserted++;
      continue;
    }
    const existing = await repo.findBySku(product.sku);
    if (existing && sameContent(existing, product)) result.unchanged++;
    else result.differing.push(product.sku);
  }
  return result;
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
