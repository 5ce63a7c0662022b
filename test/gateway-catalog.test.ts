// The gateway in front of the real catalog service (fresh Postgres database):
// the REST routes come from catalog.proto's google.api.http rules alone
// (body "product" + response_body, additional_bindings, a custom verb,
// repeated query parameters), and the policies from its method options.
import test from "ava";
import { SignJWT } from "jose";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { CatalogService } from "../gen/shop/catalog/v1/catalog_pb.js";
import { parseConfig } from "../mesh/config.js";
import { createTestDatabase, type TestDatabase } from "../mesh/testing/index.js";
import { catalogSettings, startCatalog, type Catalog } from "../services/catalog/main.js";
import { startGateway, type Gateway } from "../gateway/server.js";

const jwt = { secret: "gateway-catalog-test-secret-0123456789", issuer: "protomesh", audience: "protomesh-shop" };
let db: TestDatabase;
let catalog: Catalog;
let gw: Gateway;

const bearer = async (role: "user" | "admin") =>
  `Bearer ${await new SignJWT({ role })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(`u-${role}`)
    .setIssuer(jwt.issuer)
    .setAudience(jwt.audience)
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(jwt.secret))}`;

test.before(async () => {
  db = await createTestDatabase();
  catalog = await startCatalog(parseConfig(catalogSettings, { DATABASE_URL: db.url, PORT: "0" }), "127.0.0.1");
  gw = await startGateway({ services: [CatalogService], upstreams: { catalog: catalog.server.address }, jwt }, 0, "127.0.0.1");
});
test.after.always(async () => {
  await gw?.close();
  await catalog?.close(500);
  await db?.drop();
});

const product = (sku: string, category = "tools") => ({
  sku,
  name: `Product ${sku}`,
  description: "A thing",
  category,
  price: { currencyCode: "EUR", amountMinor: "1250" },
  tags: ["demo"],
});

test.serial("POST /v1/products: admin only; body is the product, response is the product", async (t) => {
  const post = async (auth?: string, body: object = product("GW-1")) =>
    fetch(`${gw.url}/v1/products`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(auth ? { authorization: auth } : {}) },
      body: JSON.stringify(body),
    });
  t.is((await post()).status, 401);
  t.is((await post(await bearer("user"))).status, 403);
  const res = await post(await bearer("admin"));
  t.is(res.status, 200);
  const p = (await res.json()) as { id: string; sku: string; price: { amountMinor: string } };
  t.is(p.sku, "GW-1");
  t.is(p.price.amountMinor, "1250");
  t.truthy(p.id);
  // Same SKU, different content (the same content is an idempotent retry).
  const dup = await post(await bearer("admin"), { ...product("GW-1"), name: "Another name" });
  t.is(dup.status, 409);
  t.like(await dup.json(), { code: "already_exists" });
});

test.serial("GET by id and by SKU (additional binding), 404 for an unknown one", async (t) => {
  const bySku = await fetch(`${gw.url}/v1/skus/GW-1/product`);
  t.is(bySku.status, 200);
  const p = (await bySku.json()) as { id: string; sku: string };
  const byId = (await (await fetch(`${gw.url}/v1/products/${p.id}`)).json()) as { sku: string };
  t.is(byId.sku, "GW-1");
  const missing = await fetch(`${gw.url}/v1/skus/NOPE-404/product`);
  t.is(missing.status, 404);
  t.like(await missing.json(), { code: "not_found" });
});

test.serial("list with query params and the category binding; batchGet custom verb with repeated skus", async (t) => {
  const admin = await bearer("admin");
  await fetch(`${gw.url}/v1/products`, { method: "POST", headers: { authorization: admin, "content-type": "application/json" }, body: JSON.stringify(product("GW-2", "garden")) });
  const all = (await (await fetch(`${gw.url}/v1/products?pageSize=10`)).json()) as { products: Array<{ sku: string }> };
  t.deepEqual(all.products.map((p) => p.sku), ["GW-1", "GW-2"]);
  const garden = (await (await fetch(`${gw.url}/v1/categories/garden/products`)).json()) as { products: Array<{ sku: string }> };
  t.deepEqual(garden.products.map((p) => p.sku), ["GW-2"]);
  const batch = (await (await fetch(`${gw.url}/v1/products:batchGet?skus=GW-2&skus=NOPE-1`)).json()) as {
    products: Array<{ sku: string }>;
    missingSkus: string[];
  };
  t.deepEqual(batch.products.map((p) => p.sku), ["GW-2"]);
  t.deepEqual(batch.missingSkus, ["NOPE-1"]);
  const bad = await fetch(`${gw.url}/v1/products?pageSize=many`);
  t.is(bad.status, 400);
  t.regex(((await bad.json()) as { message: string }).message, /pageSize/);
});

test.serial("the same service over Connect and gRPC through the gateway", async (t) => {
  for (const transport of [createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }), createGrpcTransport({ baseUrl: gw.url })]) {
    const client = createClient(CatalogService, transport);
    const res = await client.getProduct({ sku: "GW-1" });
    t.is(res.product?.sku, "GW-1");
  }
});

test.serial("a NUL character in a query is refused as a bad field (400, field query), not an internal error", async (t) => {
  // Postgres cannot store U+0000; the service's answer names the field that carried it.
  const res = await fetch(`${gw.url}/v1/products?query=a%00b`);
  const body = (await res.json()) as { code: string; details?: Array<{ debug?: { fieldViolations?: Array<{ field: string; reason?: string }> } }> };
  t.is(res.status, 400, JSON.stringify(body));
  t.is(body.code, "invalid_argument");
  t.deepEqual(body.details?.flatMap((d) => d.debug?.fieldViolations ?? []).map((v) => [v.field, v.reason]), [["query", "NUL_CHARACTER"]]);
});
