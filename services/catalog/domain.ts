/**
 * The catalog's rules, with no I/O: what a valid product and a valid request
 * look like, and the page-token codec. Every violation names the field by its
 * proto path ("product.price.amount_minor", "skus[2]") so a caller knows what
 * to fix.
 */
import type { FieldViolation } from '../../mesh/errors.js';
import { invalidArgument, invalidArguments } from '../../mesh/errors.js';
import type {
  BatchGetProductsRequest,
  CreateProductRequest,
  GetProductRequest,
  ListProductsRequest,
} from '../../gen/shop/catalog/v1/catalog_pb.js';

export const SKU_PATTERN = /^[A-Z0-9-]{3,32}$/;
export const CATEGORY_PATTERN = /^[a-z0-9-]{1,64}$/;
const CURRENCY_PATTERN = /^[A-Z]{3}$/;
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 100;
export const MAX_BATCH = 100;
export const MAX_QUERY_LENGTH = 100;
const MAX_NAME = 200;
const MAX_DESCRIPTION = 4000;
const MAX_TAGS = 16;
const MAX_TAG = 32;
const MAX_IMAGE_URL = 2048;
/** Prices stay well inside what every client can hold exactly (2^53). */
const MAX_AMOUNT_MINOR = 2n ** 53n - 1n;

const SKU_RULE = "must be 3-32 characters of A-Z, 0-9 and '-'";
const CATEGORY_RULE = "must be 1-64 characters of a-z, 0-9 and '-'";

/** A product as the domain sees it: validated and normalised, before it has an id. */
export interface NewProduct {
  sku: string;
  name: string;
  description: string;
  category: string;
  priceCurrency: string;
  priceAmountMinor: bigint;
  tags: string[];
  imageUrl: string;
}

/** Length in characters (code points), not UTF-16 units. */
function length(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/** Validates CreateProduct's input; throws INVALID_ARGUMENT listing every bad field. */
export function validateNewProduct(req: CreateProductRequest): NewProduct {
  const p = req.product;
  if (!p) throw invalidArgument('product', 'is required', 'REQUIRED');
  const v: FieldViolation[] = [];

  if (!SKU_PATTERN.test(p.sku)) v.push({ field: 'product.sku', description: SKU_RULE });

  const name = p.name.trim();
  if (length(name) < 1 || length(name) > MAX_NAME) {
    v.push({ field: 'product.name', description: `must be 1-${MAX_NAME} characters` });
  }
  if (length(p.description) > MAX_DESCRIPTION) {
    v.push({ field: 'product.description', description: `must be at most ${MAX_DESCRIPTION} characters` });
  }
  if (!CATEGORY_PATTERN.test(p.category)) v.push({ field: 'product.category', description: CATEGORY_RULE });

  if (!p.price) {
    v.push({ field: 'product.price', description: 'is required', reason: 'REQUIRED' });
  } else {
    if (!CURRENCY_PATTERN.test(p.price.currencyCode)) {
      v.push({ field: 'product.price.currency_code', description: 'must be an ISO 4217 code of 3 letters A-Z' });
    }
    if (p.price.amountMinor <= 0n || p.price.amountMinor > MAX_AMOUNT_MINOR) {
      v.push({ field: 'product.price.amount_minor', description: 'must be positive (minor units, at most 2^53-1)' });
    }
  }

  if (p.tags.length > MAX_TAGS) v.push({ field: 'product.tags', description: `must hold at most ${MAX_TAGS} tags` });
  const seen = new Set<string>();
  p.tags.forEach((tag, i) => {
    if (length(tag.trim()) < 1 || length(tag) > MAX_TAG) {
      v.push({ field: `product.tags[${i}]`, description: `must be 1-${MAX_TAG} characters` });
    } else if (seen.has(tag)) {
      v.push({ field: `product.tags[${i}]`, description: 'is a duplicate' });
    }
    seen.add(tag);
  });

  if (p.imageUrl !== '' && !isHttpUrl(p.imageUrl)) {
    v.push({ field: 'product.image_url', description: `must be empty or an http(s) URL of at most ${MAX_IMAGE_URL} characters` });
  }

  if (v.length > 0) throw invalidArguments(v);
  return {
    sku: p.sku,
    name,
    description: p.description,
    category: p.category,
    priceCurrency: p.price!.currencyCode,
    priceAmountMinor: p.price!.amountMinor,
    tags: [...p.tags],
    imageUrl: p.imageUrl,
  };
}

function isHttpUrl(s: string): boolean {
  if (s.length > MAX_IMAGE_URL) return false;
  try {
    const u = new URL(s);
    return u.protocol === 'https:' || u.protocol === 'http:';
  } catch {
    return false;
  }
}

/** Two products are "the same" when everything a client sent matches (id and create_time aside). */
export function sameContent(a: NewProduct, b: NewProduct): boolean {
  return (
    a.sku === b.sku &&
    a.name === b.name &&
    a.description === b.description &&
    a.category === b.category &&
    a.priceCurrency === b.priceCurrency &&
    a.priceAmountMinor === b.priceAmountMinor &&
    a.imageUrl === b.imageUrl &&
    a.tags.length === b.tags.length &&
    a.tags.every((t, i) => t === b.tags[i])
  );
}

export type ProductKey = { by: 'id'; id: string } | { by: 'sku'; sku: string };

/** GetProduct: exactly one of id and sku. */
export function validateGetProduct(req: GetProductRequest): ProductKey {
  if (req.id !== '' && req.sku !== '') throw invalidArgument('sku', 'set either id or sku, not both');
  if (req.id !== '') {
    if (!UUID_PATTERN.test(req.id)) throw invalidArgument('id', 'must be a UUID');
    return { by: 'id', id: req.id.toLowerCase() };
  }
  if (req.sku !== '') {
    if (!SKU_PATTERN.test(req.sku)) throw invalidArgument('sku', SKU_RULE);
    return { by: 'sku', sku: req.sku };
  }
  throw invalidArgument('id', 'one of id or sku is required', 'REQUIRED');
}

/** A validated ListProducts request. */
export interface ProductQuery {
  pageSize: number;
  /** Return products with a SKU greater than this (keyset). */
  afterSku: string | undefined;
  category: string | undefined;
  text: string | undefined;
}

export function validateListProducts(req: ListProductsRequest): ProductQuery {
  const v: FieldViolation[] = [];
  if (req.pageSize < 0) v.push({ field: 'page_size', description: 'must not be negative' });
  if (req.category !== '' && !CATEGORY_PATTERN.test(req.category)) {
    v.push({ field: 'category', description: CATEGORY_RULE });
  }
  const text = req.query.trim();
  if (length(req.query) > MAX_QUERY_LENGTH) {
    v.push({ field: 'query', description: `must be at most ${MAX_QUERY_LENGTH} characters` });
  }
  if (v.length > 0) throw invalidArguments(v);

  const filter = { category: req.category, query: text };
  const cursor = req.pageToken === '' ? undefined : decodePageToken(req.pageToken, filter);
  return {
    // AIP-158: zero means the default, above the maximum is coerced to it.
    pageSize: req.pageSize === 0 ? DEFAULT_PAGE_SIZE : Math.min(req.pageSize, MAX_PAGE_SIZE),
    afterSku: cursor?.afterSku,
    category: req.category || undefined,
    text: text || undefined,
  };
}

/** BatchGetProducts: 1-100 valid SKUs; returns them de-duplicated, in request order. */
export function validateBatchGet(req: BatchGetProductsRequest): string[] {
  if (req.skus.length === 0) throw invalidArgument('skus', 'must hold at least one SKU', 'REQUIRED');
  if (req.skus.length > MAX_BATCH) throw invalidArgument('skus', `must hold at most ${MAX_BATCH} SKUs`);
  const v: FieldViolation[] = [];
  req.skus.forEach((sku, i) => {
    if (!SKU_PATTERN.test(sku)) v.push({ field: `skus[${i}]`, description: SKU_RULE });
  });
  if (v.length > 0) throw invalidArguments(v);
  return [...new Set(req.skus)];
}

/**
 * Escapes LIKE wildcards so the text is matched literally; use with the
 * default escape character (backslash).
 */
export function likePattern(text: string): string {
  return `%${text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

// ---- page tokens ----------------------------------------------------------------

/**
 * A page token is base64url(JSON) of the last SKU served and the filters it
 * was served for. It is opaque to clients (nothing promises its shape), but
 * not secret: a hand-made token can only position a cursor, never reveal
 * more than ListProducts would anyway. The filters are inside so a token is
 * not reused with a different filter (AIP-158).
 */
interface PageTokenV1 {
  v: 1;
  /** Last SKU of the previous page. */
  a: string;
  /** Category filter it was issued for. */
  c: string;
  /** Text filter it was issued for. */
  q: string;
}

export interface PageFilter {
  category: string;
  query: string;
}

export function encodePageToken(afterSku: string, filter: PageFilter): string {
  const token: PageTokenV1 = { v: 1, a: afterSku, c: filter.category, q: filter.query };
  return Buffer.from(JSON.stringify(token), 'utf8').toString('base64url');
}

/**
 * The longest token ListProducts can issue: the longest SKU and category, and a query of
 * MAX_QUERY_LENGTH characters that JSON writes as six bytes each (control characters). A
 * fixed 512 refused the second page of a long non-ASCII query.
 */
export const MAX_PAGE_TOKEN_LENGTH = encodePageToken('X'.repeat(32), { category: 'x'.repeat(64), query: '\u0001'.repeat(MAX_QUERY_LENGTH) }).length;

/** Throws INVALID_ARGUMENT "page_token: ..." for a token the service did not issue for this filter. */
export function decodePageToken(token: string, filter: PageFilter): { afterSku: string } {
  const bad = () => invalidArgument('page_token', 'is not a token returned by ListProducts');
  if (token.length > MAX_PAGE_TOKEN_LENGTH || !/^[A-Za-z0-9_-]+$/.test(token)) throw bad();
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  if (
    typeof parsed !== 'object' ||
    parsed === null ||
    (parsed as PageTokenV1).v !== 1 ||
    typeof (parsed as PageTokenV1).a !== 'string' ||
    !SKU_PATTERN.test((parsed as PageTokenV1).a) ||
    typeof (parsed as PageTokenV1).c !== 'string' ||
    typeof (parsed as PageTokenV1).q !== 'string'
  ) {
    throw bad();
  }
  const t = parsed as PageTokenV1;
  if (t.c !== filter.category || t.q !== filter.query) {
    throw invalidArgument('page_token', 'was issued for a different category or query');
  }
  return { afterSku: t.a };
}
