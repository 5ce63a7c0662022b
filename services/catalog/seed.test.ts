import test from 'ava';
import { sql } from 'drizzle-orm';
import { openDatabase, resultRows } from '../../mesh/db.js';
import { createTestDatabase } from '../../mesh/testing/index.js';
import { ProductRepository } from './repository.js';
import { catalogMigrations, loadSeedProducts, seedCatalog } from './seed.js';

test('the seed list is realistic: 50+ valid products in several categories, EUR prices', (t) => {
  const products = loadSeedProducts();
  t.true(products.length >= 50);
  t.true(new Set(products.map((p) => p.category)).size >= 5);
  t.is(new Set(products.map((p) => p.sku)).size, products.length, 'SKUs are unique');
  t.true(products.every((p) => p.price.currencyCode === 'EUR' && Number.isInteger(p.price.amountMinor)));
});

test('seeding is idempotent: the second run changes nothing', async (t) => {
  const testDb = await createTestDatabase(t);
  const database = await openDatabase({ context: 'catalog', url: testDb.url, migrationsFolder: catalogMigrations });
  t.teardown(() => database.close());
  const repo = new ProductRepository(database.db);
  const snapshot = async () =>
    resultRows(await database.db.execute(sql`select * from catalog.products order by sku`));

  const first = await seedCatalog(repo);
  const count = loadSeedProducts().length;
  t.deepEqual(first, { inserted: count, unchanged: 0, differing: [] });
  const before = await snapshot();

  const second = await seedCatalog(repo);
  t.deepEqual(second, { inserted: 0, unchanged: count, differing: [] });
  t.deepEqual(await snapshot(), before);

  // A product edited since is reported and left alone.
  await database.db.execute(sql`update catalog.products set name = 'Edited' where sku = 'TEA-SEN-UJI'`);
  t.deepEqual((await seedCatalog(repo)).differing, ['TEA-SEN-UJI']);
});
