// CatalogService end to end: the real process wiring (startCatalog), a real
// TCP grpc-js connection through mesh/client, and a fresh Postgres database.
import test, { type ExecutionContext } from 'ava';
import { fromBinary } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import * as grpc from '@grpc/grpc-js';
import { CatalogService, GetProductResponseSchema } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { closeMeshClients, createMeshClient } from '../../mesh/client.js';
import { fieldViolations } from '../../mesh/errors.js';
import { identityHeaders } from '../../mesh/identity.js';
import { startServiceForTest, type ServiceUnderTest } from '../../mesh/testing/index.js';
import { catalogSettings, startCatalog, type Catalog } from './main.js';

let svc: ServiceUnderTest<Catalog>;
let catalog: Catalog;
let client: ReturnType<typeof createMeshClient<typeof CatalogService>>;

const admin = { headers: identityHeaders({ userId: 'u-admin', role: 'admin' }) };
const shopper = { headers: identityHeaders({ userId: 'u-1', role: 'user' }) };

test.before(async () => {
  svc = await startServiceForTest(catalogSettings, (config) => startCatalog(config, '127.0.0.1'));
  catalog = svc.app;
  client = createMeshClient(CatalogService, catalog.server.address);
});

test.after.always(async () => {
  closeMeshClients();
  await svc?.close();
});

interface ProductFields {
  name?: string;
  description?: string;
  category?: string;
  price?: bigint;
  tags?: string[];
  imageUrl?: string;
}

function product(sku: string, over: ProductFields = {}) {
  const { price, ...rest } = over;
  return {
    sku,
    name: `Product ${sku}`,
    description: `Description of ${sku}`,
    category: 'misc',
    price: { currencyCode: 'EUR', amountMinor: price ?? 1000n },
    tags: ['demo'],
    imageUrl: '',
    ...rest,
  };
}

/** Expects the call to fail with `code`; with `field`, the message and the BadRequest detail name it. */
async function rejects(t: ExecutionContext, call: Promise<unknown>, code: Code, field?: string): Promise<ConnectError> {
  const err = await t.throwsAsync(call, { instanceOf: ConnectError });
  t.is(err!.code, code, `${Code[err!.code]}: ${err!.rawMessage}`);
  if (field !== undefined) {
    t.true(err!.rawMessage.startsWith(`${field}: `), err!.rawMessage);
    t.is(fieldViolations(err!)[0]?.field, field);
  }
  return err!;
}

test('CreateProduct, then GetProduct by id and by SKU', async (t) => {
  const { product: created } = await client.createProduct({ product: product('RT-001', { tags: ['a', 'b'] }) }, admin);
  t.truthy(created);
  t.regex(created!.id, /^[0-9a-f-]{36}$/);
  t.is(created!.price?.amountMinor, 1000n);
  t.deepEqual(created!.tags, ['a', 'b']);
  t.true(Math.abs(Number(created!.createTime!.seconds) * 1000 - Date.now()) < 60_000);

  const byId = await client.getProduct({ id: created!.id });
  const bySku = await client.getProduct({ sku: 'RT-001' });
  t.deepEqual(byId.product, created);
  t.deepEqual(bySku.product, created);
});

test('CreateProduct needs an admin', async (t) => {
  await rejects(t, client.createProduct({ product: product('AUTH-001') }), Code.Unauthenticated);
  await rejects(t, client.createProduct({ product: product('AUTH-001') }, shopper), Code.PermissionDenied);
  await rejects(t, client.getProduct({ sku: 'AUTH-001' }), Code.NotFound);
});

test('a duplicate SKU is ALREADY_EXISTS and leaves the first product as it was; the same content again returns it', async (t) => {
  const { product: first } = await client.createProduct({ product: product('DUP-001', { price: 500n }) }, admin);
  const err = await rejects(
    t,
    client.createProduct({ product: product('DUP-001', { price: 999n, name: 'Other' }) }, admin),
    Code.AlreadyExists,
  );
  t.regex(err.rawMessage, /DUP-001/);
  t.deepEqual((await client.getProduct({ sku: 'DUP-001' })).product, first);

  const again = await client.createProduct({ product: product('DUP-001', { price: 500n }) }, admin);
  t.deepEqual(again.product, first);
});

test('concurrent creates of one SKU: exactly one wins', async (t) => {
  const attempts = await Promise.allSettled(
    Array.from({ length: 8 }, (_, i) => client.createProduct({ product: product('RACE-001', { name: `Racer ${i}` }) }, admin)),
  );
  t.is(attempts.filter((a) => a.status === 'fulfilled').length, 1);
  for (const a of attempts) {
    if (a.status === 'rejected') t.is((a.reason as ConnectError).code, Code.AlreadyExists);
  }
});

test('bad input to CreateProduct names the field', async (t) => {
  const create = (p: ReturnType<typeof product> | undefined) => client.createProduct({ product: p }, admin);
  await rejects(t, create(undefined), Code.InvalidArgument, 'product');
  await rejects(t, create(product('bad sku')), Code.InvalidArgument, 'product.sku');
  await rejects(t, create(product('BAD-001', { name: '' })), Code.InvalidArgument, 'product.name');
  await rejects(t, create(product('BAD-001', { description: 'x'.repeat(4001) })), Code.InvalidArgument, 'product.description');
  await rejects(t, create(product('BAD-001', { category: 'Bad Category' })), Code.InvalidArgument, 'product.category');
  await rejects(t, create({ ...product('BAD-001'), price: undefined as never }), Code.InvalidArgument, 'product.price');
  await rejects(t, create(product('BAD-001', { price: 0n })), Code.InvalidArgument, 'product.price.amount_minor');
  await rejects(
    t,
    create({ ...product('BAD-001'), price: { currencyCode: 'euro', amountMinor: 1n } }),
    Code.InvalidArgument,
    'product.price.currency_code',
  );
  await rejects(t, create(product('BAD-001', { tags: ['x', ''] })), Code.InvalidArgument, 'product.tags[1]');
  await rejects(t, create(product('BAD-001', { imageUrl: 'javascript:alert(1)' })), Code.InvalidArgument, 'product.image_url');
  // Every violation travels in the BadRequest detail.
  const err = await rejects(t, create(product('x', { name: '', category: 'X' })), Code.InvalidArgument, 'product.sku');
  t.deepEqual(fieldViolations(err).map((v) => v.field), ['product.sku', 'product.name', 'product.category']);
  // Nothing was written by any of them.
  await rejects(t, client.getProduct({ sku: 'BAD-001' }), Code.NotFound);
});

test('bad input to GetProduct names the field; unknown products are NOT_FOUND', async (t) => {
  await rejects(t, client.getProduct({}), Code.InvalidArgument, 'id');
  await rejects(t, client.getProduct({ id: '42' }), Code.InvalidArgument, 'id');
  await rejects(t, client.getProduct({ sku: 'lower-case' }), Code.InvalidArgument, 'sku');
  await rejects(t, client.getProduct({ id: '2b1b2c1e-0000-4000-8000-000000000000', sku: 'RT-001' }), Code.InvalidArgument, 'sku');
  await rejects(t, client.getProduct({ id: '2b1b2c1e-0000-4000-8000-000000000000' }), Code.NotFound);
  const err = await rejects(t, client.getProduct({ sku: 'NOPE-404' }), Code.NotFound);
  t.regex(err.rawMessage, /NOPE-404/);
});

test('bad input to ListProducts names the field', async (t) => {
  await rejects(t, client.listProducts({ pageSize: -1 }), Code.InvalidArgument, 'page_size');
  await rejects(t, client.listProducts({ category: 'NOT OK' }), Code.InvalidArgument, 'category');
  await rejects(t, client.listProducts({ query: 'q'.repeat(101) }), Code.InvalidArgument, 'query');
  await rejects(t, client.listProducts({ pageToken: 'forged!' }), Code.InvalidArgument, 'page_token');
  const forged = Buffer.from(JSON.stringify({ v: 1, a: 'zzz', c: '', q: '' })).toString('base64url');
  await rejects(t, client.listProducts({ pageToken: forged }), Code.InvalidArgument, 'page_token');
});

test('bad input to BatchGetProducts names the field', async (t) => {
  await rejects(t, client.batchGetProducts({ skus: [] }), Code.InvalidArgument, 'skus');
  await rejects(t, client.batchGetProducts({ skus: ['RT-001', 'no good'] }), Code.InvalidArgument, 'skus[1]');
  await rejects(
    t,
    client.batchGetProducts({ skus: Array.from({ length: 101 }, (_, i) => `MANY-${i}`) }),
    Code.InvalidArgument,
    'skus',
  );
});

/** Every product of a listing, page by page, calling `between` after each page. */
async function listAll(category: string, pageSize: number, between: (page: number) => Promise<void> = async () => {}) {
  const skus: string[] = [];
  let pageToken = '';
  for (let page = 0; page < 100; page++) {
    const res = await client.listProducts({ category, pageSize, pageToken });
    t_assertPageSize(res.products.length, pageSize);
    skus.push(...res.products.map((p) => p.sku));
    if (!res.nextPageToken) return skus;
    pageToken = res.nextPageToken;
    await between(page);
  }
  throw new Error('paging did not end');
}
function t_assertPageSize(n: number, max: number) {
  if (n > max) throw new Error(`page of ${n} > ${max}`);
}

test('paging walks every product once, in SKU order, while products are added', async (t) => {
  const category = 'paging';
  const original = Array.from({ length: 23 }, (_, i) => `PG-${String(i * 2 + 10).padStart(3, '0')}`);
  for (const sku of original) await client.createProduct({ product: product(sku, { category }) }, admin);

  let added = 0;
  const seen = await listAll(category, 5, async () => {
    // Insert around the cursor: one sorting before everything, one between existing ones, one at the end.
    const n = added++;
    for (const sku of [`PG-00${n}`, `PG-${String(11 + n * 2).padStart(3, '0')}`, `PG-9${n}9`]) {
      await client.createProduct({ product: product(sku, { category }) }, admin);
    }
  });

  t.deepEqual(seen, [...seen].sort(), 'in SKU order');
  t.is(new Set(seen).size, seen.length, 'no product twice');
  for (const sku of original) t.true(seen.includes(sku), `${sku} not skipped`);
  t.true(seen.includes('PG-909'), 'products added after the cursor show up');
  t.false(seen.includes('PG-000'), 'products added before the cursor do not');

  const first = await client.listProducts({ category });
  t.is(first.products.length, 20, 'default page size');
});

test('ListProducts filters by category and by text in name, description or tags', async (t) => {
  const items = [
    product('FLT-001', { category: 'filter-a', name: 'Green Tea Sencha', tags: ['leaf'] }),
    product('FLT-002', { category: 'filter-a', name: 'Black tea', description: 'Malty breakfast blend' }),
    product('FLT-003', { category: 'filter-b', name: 'Kettle', tags: ['stovetop', 'GreenLine'] }),
    product('FLT-004', { category: 'filter-b', name: '100% Arabica', description: 'no_wildcards here' }),
  ];
  for (const p of items) await client.createProduct({ product: p }, admin);
  const skus = async (req: { category?: string; query?: string }) =>
    (await client.listProducts({ pageSize: 100, ...req })).products.map((p) => p.sku).filter((s) => s.startsWith('FLT-'));

  t.deepEqual(await skus({ category: 'filter-a' }), ['FLT-001', 'FLT-002']);
  t.deepEqual(await skus({ query: 'green' }), ['FLT-001', 'FLT-003']); // name, tag; case-insensitive
  t.deepEqual(await skus({ query: 'MALTY' }), ['FLT-002']); // description
  t.deepEqual(await skus({ category: 'filter-b', query: 'green' }), ['FLT-003']);
  t.deepEqual(await skus({ query: '100%' }), ['FLT-004']); // '%' is literal
  t.deepEqual(await skus({ query: 'o_w' }), ['FLT-004']); // '_' is literal ("no_wildcards")
  t.deepEqual(await skus({ query: 'o%w' }), []);
  t.deepEqual(await skus({ category: 'nothing-here' }), []);

  // A token only works with the filter it was issued for.
  const page = await client.listProducts({ category: 'filter-a', pageSize: 1 });
  t.truthy(page.nextPageToken);
  await rejects(t, client.listProducts({ category: 'filter-b', pageSize: 1, pageToken: page.nextPageToken }), Code.InvalidArgument, 'page_token');
  const next = await client.listProducts({ category: 'filter-a', pageSize: 1, pageToken: page.nextPageToken });
  t.deepEqual(next.products.map((p) => p.sku), ['FLT-002']);
});

test('BatchGetProducts answers in request order, once per SKU, and lists the missing', async (t) => {
  for (const sku of ['BG-001', 'BG-002', 'BG-003']) await client.createProduct({ product: product(sku) }, admin);
  const res = await client.batchGetProducts({ skus: ['BG-003', 'BG-404', 'BG-001', 'BG-003', 'BG-405'] });
  t.deepEqual(res.products.map((p) => p.sku), ['BG-003', 'BG-001']);
  t.deepEqual(res.missingSkus, ['BG-404', 'BG-405']);
  t.is(res.products[0]!.price?.amountMinor, 1000n);
});

test('a plain grpc-js client with no generated code gets an answer over TCP', async (t) => {
  await client.createProduct({ product: product('RAW-001', { name: 'Raw bytes' }) }, admin);
  const raw = new grpc.Client(catalog.server.address, grpc.credentials.createInsecure());
  t.teardown(() => raw.close());
  // GetProductRequest{sku: "RAW-001"}: field 2, wire type 2 (length-delimited).
  const sku = Buffer.from('RAW-001');
  const request = Buffer.concat([Buffer.from([0x12, sku.length]), sku]);
  const bytes = await new Promise<Buffer>((resolve, reject) =>
    raw.makeUnaryRequest(
      '/shop.catalog.v1.CatalogService/GetProduct',
      (b: Buffer) => b,
      (b: Buffer) => b,
      request,
      (err, res) => (err ? reject(err) : resolve(res!)),
    ),
  );
  const answer = fromBinary(GetProductResponseSchema, bytes);
  t.is(answer.product?.sku, 'RAW-001');
  t.is(answer.product?.name, 'Raw bytes');
});
