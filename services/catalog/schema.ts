/**
 * The catalog's tables, all in Postgres schema `catalog`. Migrations are
 * generated from this file: `npm run db:generate` (drizzle-kit) writes
 * services/catalog/migrations/, applied by mesh/db at start.
 */
import { sql } from 'drizzle-orm';
import { bigint, index, pgSchema, text, timestamp, uniqueIndex, uuid } from 'drizzle-orm/pg-core';

export const catalog = pgSchema('catalog');

export const products = catalog.table(
  'products',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    /** Upper case by validation, so a plain unique index is case-exact and enough. */
    sku: text('sku').notNull(),
    name: text('name').notNull(),
    description: text('description').notNull().default(''),
    category: text('category').notNull(),
    priceCurrency: text('price_currency').notNull(),
    /** Integer minor units (int64 in the contract). */
    priceAmountMinor: bigint('price_amount_minor', { mode: 'bigint' }).notNull(),
    tags: text('tags').array().notNull().default(sql`'{}'::text[]`),
    imageUrl: text('image_url').notNull().default(''),
    createTime: timestamp('create_time', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  },
  (t) => [
    // Uniqueness of SKUs and the keyset order of ListProducts.
    uniqueIndex('products_sku_key').on(t.sku),
    // ListProducts filtered by category, still in SKU order.
    index('products_category_sku_idx').on(t.category, t.sku),
  ],
);

export type ProductRow = typeof products.$inferSelect;
export type NewProductRow = typeof products.$inferInsert;
