import test from 'ava';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { fieldViolations } from '../../mesh/errors.js';
import {
  BatchGetProductsRequestSchema,
  CreateProductRequestSchema,
  GetProductRequestSchema,
  ListProductsRequestSchema,
} from '../../gen/shop/catalog/v1/catalog_pb.js';
import {
  decodePageToken,
  encodePageToken,
  MAX_PAGE_TOKEN_LENGTH,
  MAX_QUERY_LENGTH,
  likePattern,
  sameContent,
  validateBatchGet,
  validateGetProduct,
  validateListProducts,
  validateNewProduct,
} from './domain.js';

const valid = {
  sku: 'ESP-001',
  name: 'Espresso beans',
  description: 'Dark roast',
  category: 'coffee',
  price: { currencyCode: 'EUR', amountMinor: 1299n },
  tags: ['dark', 'arabica'],
  imageUrl: 'https://img.example.com/esp.png',
};

function createReq(product: Partial<typeof valid> | undefined) {
  return create(CreateProductRequestSchema, product === undefined ? {} : { product: { ...valid, ...product } });
}

/** Asserts INVALID_ARGUMENT whose first violation is `field` (and returns all violated fields). */
function invalid(t: import('ava').ExecutionContext, fn: () => unknown, field: string): string[] {
  const err = t.throws(fn, { instanceOf: ConnectError }) as ConnectError;
  t.is(err.code, Code.InvalidArgument);
  t.true(err.rawMessage.startsWith(`${field}: `), err.rawMessage);
  return fieldViolations(err).map((v) => v.field);
}

test('a valid product passes, trimmed name', (t) => {
  const p = validateNewProduct(createReq({ name: '  Espresso beans ' }));
  t.is(p.name, 'Espresso beans');
  t.is(p.priceAmountMinor, 1299n);
  t.true(sameContent(p, validateNewProduct(createReq({}))));
  t.false(sameContent(p, validateNewProduct(createReq({ tags: ['arabica', 'dark'] }))));
});

test('every product field is checked and named', (t) => {
  invalid(t, () => validateNewProduct(createReq(undefined)), 'product');
  for (const sku of ['', 'ab-1', 'AB', 'A'.repeat(33), 'AB_1', 'ÄBC']) {
    invalid(t, () => validateNewProduct(createReq({ sku })), 'product.sku');
  }
  invalid(t, () => validateNewProduct(createReq({ name: '   ' })), 'product.name');
  invalid(t, () => validateNewProduct(createReq({ name: 'x'.repeat(201) })), 'product.name');
  t.notThrows(() => validateNewProduct(createReq({ name: '☕'.repeat(200) })));
  invalid(t, () => validateNewProduct(createReq({ description: 'x'.repeat(4001) })), 'product.description');
  for (const category of ['', 'Coffee', 'cof fee', 'x'.repeat(65)]) {
    invalid(t, () => validateNewProduct(createReq({ category })), 'product.category');
  }
  invalid(t, () => validateNewProduct(create(CreateProductRequestSchema, { product: { ...valid, price: undefined } })), 'product.price');
  invalid(t, () => validateNewProduct(createReq({ price: { currencyCode: 'eur', amountMinor: 1n } })), 'product.price.currency_code');
  invalid(t, () => validateNewProduct(createReq({ price: { currencyCode: 'EUR', amountMinor: 0n } })), 'product.price.amount_minor');
  invalid(t, () => validateNewProduct(createReq({ price: { currencyCode: 'EUR', amountMinor: -5n } })), 'product.price.amount_minor');
  invalid(t, () => validateNewProduct(createReq({ tags: Array.from({ length: 17 }, (_, i) => `t${i}`) })), 'product.tags');
  invalid(t, () => validateNewProduct(createReq({ tags: ['ok', ''] })), 'product.tags[1]');
  invalid(t, () => validateNewProduct(createReq({ tags: ['ok', 'ok'] })), 'product.tags[1]');
  invalid(t, () => validateNewProduct(createReq({ imageUrl: 'ftp://x/y.png' })), 'product.image_url');
  t.notThrows(() => validateNewProduct(createReq({ imageUrl: '' })));
});

test('all violations are reported at once', (t) => {
  const fields = invalid(t, () => validateNewProduct(createReq({ sku: 'x', name: '', category: 'A' })), 'product.sku');
  t.deepEqual(fields, ['product.sku', 'product.name', 'product.category']);
});

test('GetProduct takes exactly one of id and sku', (t) => {
  const req = (init: { id?: string; sku?: string }) => create(GetProductRequestSchema, init);
  t.deepEqual(validateGetProduct(req({ sku: 'ESP-001' })), { by: 'sku', sku: 'ESP-001' });
  const id = '0b5b1c3e-7a0a-4f43-9d59-2f1b8f1f2a10';
  t.deepEqual(validateGetProduct(req({ id: id.toUpperCase() })), { by: 'id', id });
  invalid(t, () => validateGetProduct(req({})), 'id');
  invalid(t, () => validateGetProduct(req({ id, sku: 'ESP-001' })), 'sku');
  invalid(t, () => validateGetProduct(req({ id: 'nope' })), 'id');
  invalid(t, () => validateGetProduct(req({ sku: 'esp-001' })), 'sku');
});

test('ListProducts: page size default, cap and bounds; filters checked', (t) => {
  const req = (init: Record<string, unknown>) => create(ListProductsRequestSchema, init);
  t.is(validateListProducts(req({})).pageSize, 20);
  t.is(validateListProducts(req({ pageSize: 500 })).pageSize, 100);
  t.is(validateListProducts(req({ pageSize: 7 })).pageSize, 7);
  invalid(t, () => validateListProducts(req({ pageSize: -1 })), 'page_size');
  invalid(t, () => validateListProducts(req({ category: 'Not A Slug' })), 'category');
  invalid(t, () => validateListProducts(req({ query: 'q'.repeat(101) })), 'query');
  t.deepEqual(validateListProducts(req({ category: 'tea', query: '  green ' })), {
    pageSize: 20,
    afterSku: undefined,
    category: 'tea',
    text: 'green',
  });
});

test('page tokens round-trip and are bound to their filter', (t) => {
  const filter = { category: 'tea', query: 'green' };
  const token = encodePageToken('TEA-010', filter);
  t.regex(token, /^[A-Za-z0-9_-]+$/);
  t.deepEqual(decodePageToken(token, filter), { afterSku: 'TEA-010' });
  const q = validateListProducts(create(ListProductsRequestSchema, { pageToken: token, category: 'tea', query: 'green ' }));
  t.is(q.afterSku, 'TEA-010');
  invalid(t, () => decodePageToken(token, { category: 'coffee', query: 'green' }), 'page_token');
});

test('the second page of the longest query and category it accepts is served: every token ListProducts issues decodes', (t) => {
  const category = 'c'.repeat(64);
  for (const query of ['\u{1F375}'.repeat(MAX_QUERY_LENGTH), '\u0001'.repeat(MAX_QUERY_LENGTH), '"\\'.repeat(MAX_QUERY_LENGTH / 2)]) {
    const first = validateListProducts(create(ListProductsRequestSchema, { category, query }));
    const token = encodePageToken('ZZZ-' + '9'.repeat(28), { category, query: first.text ?? '' });
    const second = validateListProducts(create(ListProductsRequestSchema, { category, query, pageToken: token }));
    t.is(second.afterSku, 'ZZZ-' + '9'.repeat(28), `${token.length} characters`);
  }
});

test('forged or garbled page tokens are INVALID_ARGUMENT page_token', (t) => {
  const filter = { category: '', query: '' };
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  for (const token of [
    'not a token!',
    'abc',
    b64('just a string'),
    b64({ v: 2, a: 'ESP-001', c: '', q: '' }),
    b64({ v: 1, a: "'; drop table products; --", c: '', q: '' }),
    b64({ v: 1, a: 'ESP-001' }),
    'x'.repeat(MAX_PAGE_TOKEN_LENGTH + 1),
  ]) {
    invalid(t, () => decodePageToken(token, filter), 'page_token');
  }
});

test('BatchGet validates each SKU by index and de-duplicates in order', (t) => {
  const req = (skus: string[]) => create(BatchGetProductsRequestSchema, { skus });
  t.deepEqual(validateBatchGet(req(['B-2', 'A-1', 'B-2'].map((s) => `X${s}`))), ['XB-2', 'XA-1']);
  invalid(t, () => validateBatchGet(req([])), 'skus');
  invalid(t, () => validateBatchGet(req(Array.from({ length: 101 }, (_, i) => `SKU-${i}`))), 'skus');
  invalid(t, () => validateBatchGet(req(['ESP-001', 'bad'])), 'skus[1]');
});

test('likePattern matches the text literally', (t) => {
  t.is(likePattern('50% off_now\\'), '%50\\% off\\_now\\\\%');
});
