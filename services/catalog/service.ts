/**
 * CatalogService handlers: read the request, apply the domain rules, ask the
 * repository, answer. Validation lives in domain.ts, SQL in repository.ts.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { ServiceImpl } from '@connectrpc/connect';
import { alreadyExists, notFound } from '../../mesh/errors.js';
import { requireAdmin } from '../../mesh/identity.js';
import { CatalogService, ProductSchema, type Product } from '../../gen/shop/catalog/v1/catalog_pb.js';
import {
  encodePageToken,
  sameContent,
  validateBatchGet,
  validateGetProduct,
  validateListProducts,
  validateNewProduct,
} from './domain.js';
import type { ProductRepository } from './repository.js';
import type { ProductRow } from './schema.js';

const PRODUCT = 'shop.catalog.v1.Product';

export function createCatalogService(repo: ProductRepository): ServiceImpl<typeof CatalogService> {
  return {
    /**
     * Idempotent by content: creating a SKU that exists with exactly the same
     * content returns the existing product (a retried create after a lost
     * answer succeeds, and the seed can be re-run); any difference is
     * ALREADY_EXISTS.
     */
    async createProduct(req, ctx) {
      requireAdmin(ctx);
      const product = validateNewProduct(req);
      const inserted = await repo.insertIfAbsent(product);
      if (inserted) return { product: toProto(inserted) };
      const existing = await repo.findBySku(product.sku);
      if (existing && sameContent(existing, product)) return { product: toProto(existing) };
      throw alreadyExists(PRODUCT, `sku/${product.sku}`, `product.sku: ${product.sku} already exists`);
    },

    async getProduct(req) {
      const key = validateGetProduct(req);
      const row = key.by === 'id' ? await repo.findById(key.id) : await repo.findBySku(key.sku);
      if (!row) {
        const name = key.by === 'id' ? `id/${key.id}` : `sku/${key.sku}`;
        throw notFound(PRODUCT, name, `product with ${key.by} ${key.by === 'id' ? key.id : key.sku} not found`);
      }
      return { product: toProto(row) };
    },

    async listProducts(req) {
      const query = validateListProducts(req);
      const { rows, more } = await repo.list(query);
      const last = rows.at(-1);
      return {
        products: rows.map(toProto),
        nextPageToken:
          more && last ? encodePageToken(last.sku, { category: req.category, query: req.query.trim() }) : '',
      };
    },

    async batchGetProducts(req) {
      const skus = validateBatchGet(req);
      const bySku = new Map((await repo.findBySkus(skus)).map((row) => [row.sku, row]));
      return {
        products: skus.flatMap((sku) => {
          const row = bySku.get(sku);
          return row ? [toProto(row)] : [];
        }),
        missingSkus: skus.filter((sku) => !bySku.has(sku)),
      };
    },
  };
}

export function toProto(row: ProductRow): Product {
  return create(ProductSchema, {
    id: row.id,
    sku: row.sku,
    name: row.name,
    description: row.description,
    category: row.category,
    price: { currencyCode: row.priceCurrency, amountMinor: row.priceAmountMinor },
    tags: row.tags,
    imageUrl: row.imageUrl,
    createTime: timestampFromDate(row.createTime),
  });
}
