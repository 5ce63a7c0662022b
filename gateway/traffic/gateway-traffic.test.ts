// Canary routing and shadow traffic through a real gateway in front of real
// mesh servers: a stable and a canary deployment of a small catalog service
// that answers with its version's name, and a shadow deployment whose
// behaviour each test switches (same answer, another answer, held, slow, down).
import test from "ava";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type ServiceImpl, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { CatalogService, ProductSchema } from "../../gen/shop/catalog/v1/catalog_pb.js";
import { serve, startMeshServer, type MeshServer } from "../../mesh/server.js";
import { parseConfig } from "../config.js";
import { startGateway, type Gateway } from "../server.js";
import { EchoService } from "../../gen/protomesh/testing/v1/echo_pb.js";
import { freePort, startEcho, testJwt, token } from "../testing/harness.js";
import { selectVariant } from "./canary.js";
import { parseTrafficConfig } from "./config.js";

type Mode = "same" | "different" | "not_found" | "hold" | "hang";

interface Deployment {
  server: MeshServer;
  /** What each GetProduct / CreateProduct call saw. */
  calls: Array<{ method: string; shadow: string | null; user: string | null }>;
  mode: Mode;
  /** Lets the calls held in "hold" mode answer. */
  release(): void;
  /** Resolves when the next call is held. */
  nextHeld(): Promise<void>;
}

/** A catalog deployment answering with `version` as the product name. */
async function deploy(version: string): Promise<Deployment> {
  let release!: () => void;
  let held = new Promise<void>((r) => (release = r));
  let onHeld: (() => void) | undefined;
  const d: Deployment = {
    calls: [],
    mode: "same",
    release: () => {
      release();
      held = new Promise<void>((r) => (release = r));
    },
    nextHeld: () => new Promise<void>((r) => (onHeld = r)),
    server: undefined as unknown as MeshServer,
  };
  const answer = (id: string) => create(ProductSchema, { id, sku: `SKU-${id}`, name: d.mode === "different" ? `${version}-v2` : version });
  const impl: Partial<ServiceImpl<typeof CatalogService>> = {
    async getProduct(req, ctx) {
      d.calls.push({ method: "GetProduct", shadow: ctx.requestHeader.get("x-mesh-shadow"), user: ctx.requestHeader.get("x-mesh-user-id") });
      if (d.mode === "not_found") throw new ConnectError(`product ${req.id} not found`, Code.NotFound);
      if (d.mode === "hold") {
        const wait = held;
        onHeld?.();
        onHeld = undefined;
        await wait;
      }
      if (d.mode === "hang") await new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)));
      return { product: answer(req.id) };
    },
    async createProduct(req, ctx) {
      d.calls.push({ method: "CreateProduct", shadow: ctx.requestHeader.get("x-mesh-shadow"), user: ctx.requestHeader.get("x-mesh-user-id") });
      return { product: create(ProductSchema, { sku: req.product?.sku ?? "", id: "new", name: version }) };
    },
  };
  d.server = await startMeshServer({ name: version, host: "127.0.0.1", port: 0, services: [serve(CatalogService, impl)], reflection: false });
  return d;
}

const baseConfig = {
  trustForwardedFor: true,
  // Hundreds of calls from one test process: no rate limit in the way.
  methods: { "shop.catalog.v1.CatalogService/GetProduct": { rateLimit: null } },
};

async function gateway(stable: Deployment, traffic: unknown): Promise<Gateway> {
  return startGateway(
    {
      services: [CatalogService],
      upstreams: { catalog: stable.server.address },
      jwt: testJwt,
      config: parseConfig({ ...baseConfig, traffic }),
    },
    0,
    "127.0.0.1",
  );
}

const protocols: Array<[string, (gw: Gateway) => Transport]> = [
  ["Connect", (gw) => createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" })],
  ["gRPC fast path", (gw) => createGrpcTransport({ baseUrl: gw.url })],
];

/** The product name (= version) REST answers for GET /v1/products/{id}. */
async function restVersion(gw: Gateway, headers: Record<string, string>, id = "p1"): Promise<string> {
  const res = await fetch(`${gw.url}/v1/products/${id}`, { headers });
  if (res.status !== 200) throw new Error(`REST ${res.status}: ${await res.text()}`);
  return ((await res.json()) as { name: string }).name;
}

async function rpcVersion(client: Client<typeof CatalogService>, headers: Record<string, string>, id = "p1"): Promise<string> {
  const res = await client.getProduct({ id }, { headers });
  return res.product!.name;
}

test("canary: the configured share of users, each sticky, the header override, over REST, Connect and gRPC; hot reload", async (t) => {
  const stable = await deploy("stable");
  const canary = await deploy("canary");
  const traffic = { catalog: { canary: { target: canary.server.address, percent: 30, header: "x-canary", sticky: "user" } } };
  const rule = parseTrafficConfig(traffic).catalog.canary!;
  const gw = await gateway(stable, traffic);
  t.teardown(async () => {
    await gw.close();
    await stable.server.close(0);
    await canary.server.close(0);
  });
  const clients = protocols.map(([name, make]) => [name, createClient(CatalogService, make(gw))] as const);

  const users = await Promise.all(
    Array.from({ length: 40 }, async (_, i) => {
      const userId = `user-${i}`;
      const headers = { authorization: `Bearer ${await token(userId, "user")}`, "x-forwarded-for": `10.0.0.${i}` };
      const expected = selectVariant(rule, { headers: new Headers(), userId }, () => t.fail("sticky choice used randomness") as never).variant;
      // The same user twice over REST and once per RPC protocol: always the version the hash gives.
      const seen = [await restVersion(gw, headers), await restVersion(gw, headers)];
      for (const [, client] of clients) seen.push(await rpcVersion(client, headers));
      t.deepEqual(seen, [expected, expected, expected, expected], `${userId}: REST, REST, ${clients.map(([n]) => n).join(", ")}`);
      return { headers, expected };
    }),
  );
  const canaryUsers = users.filter((u) => u.expected === "canary").length;
  t.true(canaryUsers >= 4 && canaryUsers <= 20, `${canaryUsers} of 40 users on a 30 % canary`);
  const stableUser = users.find((u) => u.expected === "stable")?.headers;
  const canaryUser = users.find((u) => u.expected === "canary")?.headers;
  t.truthy(stableUser && canaryUser);

  // Without a token the client IP keeps one version.
  await Promise.all(
    Array.from({ length: 20 }, async (_, i) => {
      const ip = `172.16.${i}.9`;
      const expected = selectVariant(rule, { headers: new Headers(), ip }).variant;
      const seen = [await restVersion(gw, { "x-forwarded-for": ip }), await restVersion(gw, { "x-forwarded-for": ip })];
      t.deepEqual(seen, [expected, expected], `anonymous ${ip}`);
    }),
  );

  // The header wins over the hash, both ways, on every protocol.
  t.is(await restVersion(gw, { ...stableUser!, "x-canary": "always" }), "canary");
  t.is(await restVersion(gw, { ...canaryUser!, "x-canary": "never" }), "stable");
  for (const [name, client] of clients) {
    t.is(await rpcVersion(client, { ...stableUser!, "x-canary": "always" }), "canary", name);
    t.is(await rpcVersion(client, { ...canaryUser!, "x-canary": "never" }), "stable", name);
  }
  // Identity reaches the canary as it reaches the stable version.
  t.true(canary.calls.some((c) => c.user !== null && c.user.startsWith("user-")));

  const routed = gw.pipeline.traffic!.stats().routed;
  t.true(routed["catalog canary"] > 0 && routed["catalog stable"] > 0);

  // Hot reload: everyone to the canary, then everyone back (the header still works).
  gw.setConfig(parseConfig({ ...baseConfig, traffic: { catalog: { canary: { target: canary.server.address, percent: 100 } } } }));
  t.is(await restVersion(gw, stableUser!), "canary");
  gw.setConfig(parseConfig({ ...baseConfig, traffic: { catalog: { canary: { target: canary.server.address, percent: 0 } } } }));
  t.is(await restVersion(gw, canaryUser!), "stable");
  t.is(await restVersion(gw, { ...canaryUser!, "x-canary": "always" }), "canary");
  // A config naming an upstream the gateway does not serve is refused whole.
  t.throws(() => gw.setConfig(parseConfig({ ...baseConfig, defaultTimeoutMs: 1, traffic: { catalgo: { canary: { target: "h:1" } } } })), {
    message: /unknown upstream "catalgo"/,
  });
  t.is(gw.pipeline.currentConfig.defaultTimeoutMs, 10_000, "the rejected config changed nothing");
});

test("shadow: mirrored calls are compared (match, body and status mismatch) and never change or delay the client's answer", async (t) => {
  const stable = await deploy("stable");
  const shadow = await deploy("stable"); // the same build: same answers
  const gw = await gateway(stable, { catalog: { shadow: { target: shadow.server.address, percent: 100, timeoutMs: 5_000 } } });
  const traffic = gw.pipeline.traffic!;
  t.teardown(async () => {
    shadow.release();
    await gw.close();
    await stable.server.close(0);
    await shadow.server.close(0);
  });
  const clients = protocols.map(([name, make]) => [name, createClient(CatalogService, make(gw))] as const);
  const user = { authorization: `Bearer ${await token("shopper-1", "user")}` };

  // Same answers: every protocol's calls mirrored once, with identity, marked as shadow calls.
  for (let i = 0; i < 3; i++) {
    t.is(await restVersion(gw, user), "stable");
    for (const [, client] of clients) t.is(await rpcVersion(client, user), "stable");
  }
  await traffic.idle();
  t.is(shadow.calls.length, 9);
  t.true(shadow.calls.every((c) => c.shadow === "1" && c.user === "shopper-1"));
  t.is(stable.calls.filter((c) => c.shadow !== null).length, 0, "the primary never sees the shadow marker");
  t.like(traffic.stats().shadow, { "catalog match": 9 });
  const metrics = await (await fetch(`${gw.url}/metrics`)).text();
  t.regex(metrics, /mesh_traffic_shadow_total\{upstream="catalog",grpc_method="GetProduct",outcome="match"\} \d+/);

  // Another answer from the shadow: a body mismatch per call; the client still gets the stable answer.
  shadow.mode = "different";
  t.is(await restVersion(gw, user), "stable");
  for (const [, client] of clients) t.is(await rpcVersion(client, user), "stable");
  await traffic.idle();
  t.like(traffic.stats().shadow, { "catalog body_mismatch": 3 });

  // An error from the shadow: a status mismatch.
  shadow.mode = "not_found";
  t.is(await restVersion(gw, user), "stable");
  for (const [, client] of clients) t.is(await rpcVersion(client, user), "stable");
  await traffic.idle();
  t.like(traffic.stats().shadow, { "catalog status_mismatch": 3 });

  // A held shadow: the client's answer arrives while the shadow call is still waiting.
  for (const [name, answer] of [
    ["REST", () => restVersion(gw, user)],
    ...clients.map(([name, client]) => [name, () => rpcVersion(client, user)] as const),
  ] as const) {
    shadow.mode = "hold";
    const held = shadow.nextHeld();
    t.is(await answer(), "stable", name);
    await held; // the shadow call is in the handler, held
    t.is(traffic.inFlight(), 1, `${name}: answered while its shadow call is still open`);
    shadow.mode = "same";
    shadow.release();
    await traffic.idle();
  }
  t.like(traffic.stats().shadow, { "catalog match": 12 });
});

test("shadow: its own deadline, a target that is down, the concurrency bound, and non-idempotent methods", async (t) => {
  const stable = await deploy("stable");
  const shadow = await deploy("stable");
  const down = await freePort();
  const config = (shadowConfig: Record<string, unknown>) =>
    parseConfig({ ...baseConfig, traffic: { catalog: { shadow: { target: shadow.server.address, ...shadowConfig } } } });
  const gw = await startGateway(
    { services: [CatalogService], upstreams: { catalog: stable.server.address }, jwt: testJwt, config: config({ timeoutMs: 200 }) },
    0,
    "127.0.0.1",
  );
  const traffic = gw.pipeline.traffic!;
  t.teardown(async () => {
    shadow.release();
    await gw.close();
    await stable.server.close(0);
    await shadow.server.close(0);
  });
  const clients = protocols.map(([name, make]) => [name, createClient(CatalogService, make(gw))] as const);
  const user = { authorization: `Bearer ${await token("shopper-2", "user")}` };
  const admin = { authorization: `Bearer ${await token("admin-1", "admin")}`, "content-type": "application/json" };

  // A shadow slower than its deadline: the client is answered, the shadow call counts as a timeout.
  shadow.mode = "hang";
  t.is(await restVersion(gw, user), "stable");
  for (const [, client] of clients) t.is(await rpcVersion(client, user), "stable");
  await traffic.idle();
  t.like(traffic.stats().shadow, { "catalog timeout": 3 });

  // A shadow target nobody listens on: the client is answered, the shadow's UNAVAILABLE is a status mismatch.
  gw.setConfig(parseConfig({ ...baseConfig, traffic: { catalog: { shadow: { target: `127.0.0.1:${down}`, timeoutMs: 2_000 } } } }));
  t.is(await restVersion(gw, user), "stable");
  for (const [, client] of clients) t.is(await rpcVersion(client, user), "stable");
  await traffic.idle();
  t.like(traffic.stats().shadow, { "catalog status_mismatch": 3 });

  // At most one shadow call in flight: the others are dropped and counted, the clients all answered.
  gw.setConfig(config({ timeoutMs: 5_000, maxConcurrent: 1 }));
  shadow.mode = "hold";
  const before = shadow.calls.length;
  t.is(await restVersion(gw, user), "stable");
  t.is(traffic.inFlight(), 1);
  t.is(await restVersion(gw, user), "stable");
  for (const [, client] of clients) t.is(await rpcVersion(client, user), "stable");
  t.like(traffic.stats().shadow, { "catalog dropped": 3 });
  shadow.mode = "same";
  shadow.release();
  await traffic.idle();
  t.is(shadow.calls.length - before, 1);

  // CreateProduct is not idempotent: sampled but never mirrored...
  const createBody = JSON.stringify({ sku: "SKU-1", name: "x" });
  const created = await fetch(`${gw.url}/v1/products`, { method: "POST", headers: admin, body: createBody });
  t.is(created.status, 200, await created.clone().text());
  t.is(((await created.json()) as { name: string }).name, "stable");
  await traffic.idle();
  t.is(shadow.calls.filter((c) => c.method === "CreateProduct").length, 0);
  t.like(traffic.stats().shadow, { "catalog unsafe_skipped": 1 });
  // ...unless the config allows it for that method.
  gw.setConfig(config({ methods: { CreateProduct: { allowNonIdempotent: true } } }));
  const again = await fetch(`${gw.url}/v1/products`, { method: "POST", headers: admin, body: createBody });
  t.is(again.status, 200);
  await traffic.idle();
  t.is(shadow.calls.filter((c) => c.method === "CreateProduct").length, 1);
});

test("shadow: server streams mirrored only when the config asks, compared by final status, over REST, Connect and the gRPC fast path", async (t) => {
  const primaryState = { flaky: new Map<string, number>(), calls: 0 };
  const mirrorState = { flaky: new Map<string, number>(), calls: 0 };
  const primary = await startEcho(primaryState);
  const mirror = await startEcho(mirrorState);
  const down = await freePort();
  // EchoStream is not marked idempotent: it needs the explicit allowance (harmless here).
  const config = (shadow: Record<string, unknown>) =>
    parseConfig({ traffic: { echo: { shadow: { target: mirror.address, methods: { EchoStream: { allowNonIdempotent: true } }, ...shadow } } } });
  const gw = await startGateway({ services: [EchoService], upstreams: { echo: primary.address }, config: config({}) }, 0, "127.0.0.1");
  const traffic = gw.pipeline.traffic!;
  t.teardown(async () => {
    await gw.close();
    await primary.close(0);
    await mirror.close(0);
  });
  const clients = protocols.map(([name, make]) => [name, createClient(EchoService, make(gw))] as const);
  const streamOver = async (count: number, failCode = "") => {
    const got: string[] = [];
    const res = await fetch(`${gw.url}/v1/echo/s/stream?count=${count}&failCode=${failCode}`);
    got.push(`REST ${(await res.text()).trim().split("\n").length}`);
    for (const [name, client] of clients) {
      let n = 0;
      try {
        for await (const _ of client.echoStream({ id: "s", count, failCode })) n++;
        got.push(`${name} ${n}`);
      } catch (e) {
        got.push(`${name} ${n} ${ConnectError.from(e).code}`);
      }
    }
    return got;
  };

  // Streams are not mirrored unless asked for.
  t.deepEqual(await streamOver(2), ["REST 2", "Connect 2", "gRPC fast path 2"]);
  await traffic.idle();
  t.is(mirrorState.calls, 0);

  gw.setConfig(config({ streams: true }));
  t.deepEqual(await streamOver(3), ["REST 3", "Connect 3", "gRPC fast path 3"]);
  await traffic.idle();
  t.is(mirrorState.calls, 3, "each protocol's stream mirrored once");
  t.like(traffic.stats().shadow, { "echo match": 3 });

  // A stream that ends in an error: the same error from the shadow is a match.
  t.deepEqual(await streamOver(1, "NOT_FOUND"), ["REST 2", `Connect 1 ${Code.NotFound}`, `gRPC fast path 1 ${Code.NotFound}`]);
  await traffic.idle();
  t.like(traffic.stats().shadow, { "echo match": 6 });

  // The shadow target down: every client stream unchanged, each mirror a status mismatch.
  gw.setConfig(parseConfig({ traffic: { echo: { shadow: { target: `127.0.0.1:${down}`, streams: true, allowNonIdempotent: true } } } }));
  t.deepEqual(await streamOver(2), ["REST 2", "Connect 2", "gRPC fast path 2"]);
  await traffic.idle();
  t.like(traffic.stats().shadow, { "echo status_mismatch": 3 });
  t.is(primaryState.calls, 12);
});

test("canary: a failing canary opens its own breaker, never the stable version's", async (t) => {
  const primary = await startEcho();
  const down = await freePort();
  const gw = await startGateway(
    {
      services: [EchoService],
      upstreams: { echo: primary.address },
      config: parseConfig({ traffic: { echo: { canary: { target: `127.0.0.1:${down}`, percent: 0 } } } }),
    },
    0,
    "127.0.0.1",
  );
  t.teardown(async () => {
    await gw.close();
    await primary.close(0);
  });
  const get = (variant: string) => fetch(`${gw.url}/v1/echo/b`, { headers: { "x-canary": variant } });
  // The echo service's breaker opens at 50 % failures over at least 4 calls.
  const statuses: number[] = [];
  for (let i = 0; i < 8; i++) statuses.push((await get("always")).status);
  t.true(statuses.every((s) => s === 503), statuses.join(" "));
  t.is(gw.breakers.state("echo@canary"), "open");
  const failFast = await get("always");
  t.regex(((await failFast.json()) as { message: string }).message, /circuit breaker open/);
  for (let i = 0; i < 4; i++) t.is((await get("never")).status, 200, "stable keeps answering");
  t.is(gw.breakers.state("echo"), "closed");
});
