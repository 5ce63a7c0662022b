/** The catalog's SQL, through drizzle: one method per question the service asks. */
import { and, asc, eq, gt, ilike, inArray, or, sql, type SQL } from 'drizzle-orm';
import type { Database } from '../../mesh/db.js';
import { likePattern, type NewProduct, type ProductQuery } from './domain.js';
import { products, type ProductRow } from './schema.js';

export class ProductRepository {
  constructor(private readonly db: Database) {}

  /**
   * Inserts the product unless its SKU is taken, in one statement: the unique
   * index decides, so two concurrent creates of one SKU cannot both win and
   * nothing is half-written. Returns undefined when the SKU already existed.
   */
  async insertIfAbsent(p: NewProduct): Promise<ProductRow | undefined> {
    const [row] = await this.db
      .insert(products)
      .values(p)
      .onConflictDoNothing({ target: products.sku })
      .returning();
    return row;
  }

  /** Many at once, same rule as insertIfAbsent; returns the rows actually inserted. */
  async insertManyIfAbsent(ps: NewProduct[]): Promise<ProductRow[]> {
    if (ps.length === 0) return [];
    return this.db.insert(products).values(ps).onConflictDoNothing({ target: products.sku }).returning();
  }

  async findById(id: string): Promise<ProductRow | undefined> {
    const [row] = await this.db.select().from(products).where(eq(products.id, id));
    return row;
  }

  async findBySku(sku: string): Promise<ProductRow | undefined> {
    const [row] = await this.db.select().from(products).where(eq(products.sku, sku));
    return row;
  }

  async findBySkus(skus: string[]): Promise<ProductRow[]> {
    if (skus.length === 0) return [];
    return this.db.select().from(products).where(inArray(products.sku, skus));
  }

  /**
   * One page in SKU order after `afterSku` (keyset paging: a page never
   * repeats or skips a product that existed when the first page was read,
   * whatever is inserted in between). Reads one row more than asked to know
   * whether another page follows.
   */
  async list(q: ProductQuery): Promise<{ rows: ProductRow[]; more: boolean }> {
    const where: SQL[] = [];
    if (q.afterSku !== undefined) where.push(gt(products.sku, q.afterSku));
    if (q.category !== undefined) where.push(eq(products.category, q.category));
    if (q.text !== undefined) {
      const pattern = likePattern(q.text);
      where.push(
        or(
          ilike(products.name, pattern),
          ilike(products.description, pattern),
          sql`array_to_string(${products.tags}, ' ') ilike ${pattern}`,
        )!,
      );
    }
    const rows = await this.db
      .select()
      .from(products)
      .where(and(...where))
      .orderBy(asc(products.sku))
      .limit(q.pageSize + 1);
    const more = rows.length > q.pageSize;
    return { rows: more ? rows.slice(0, q.pageSize) : rows, more };
  }
}
