// mesh/server and mesh/client together, over real TCP: round trips, errors
// and their details, UNIMPLEMENTED, deadlines, cancellation, metadata
// propagation and retries.
import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { createClient } from "@connectrpc/connect";
import type { HandlerContext, ServiceImpl, Transport } from "@connectrpc/connect";
import { CatalogService, ProductSchema } from "../gen/shop/catalog/v1/catalog_pb.js";
import { ResourceInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { closeMeshClients, createMeshClient, createMeshTransport, methodPolicyOf } from "./client.js";
import { fieldViolations, invalidArgument, notFound } from "./errors.js";
import { methodPath, serializer, deserializer } from "./grpc-codec.js";
import { databaseUnavailableError } from "./db.js";
import { MeshHandlerContext } from "./handler-context.js";
import { serve, startMeshServer } from "./server.js";
import type { MeshServer } from "./server.js";
import { TestService } from "./testing/test-service.js";

const product = (id: string) =>
  create(ProductSchema, {
    id,
    sku: `SKU-${id}`,
    name: `Product ${id}`,
    category: "books",
    price: { currencyCode: "EUR", amountMinor: 1999n },
    tags: ["a", "b"],
    createTime: timestampFromMs(1_700_000_000_000),
  });

/** Resolves when `signal` aborts, with its reason. */
const aborted = (signal: AbortSignal) =>
  new Promise<unknown>((resolve) => {
    if (signal.aborted) resolve(signal.reason);
    else signal.addEventListener("abort", () => resolve(signal.reason), { once: true });
  });

// What handlers saw, for assertions; each test uses its own keys.
const seen = new Map<string, unknown>();
let unavailableLeft = new Map<string, number>();

const catalogImpl: Partial<ServiceImpl<typeof CatalogService>> = {
  async getProduct(req, ctx) {
    seen.set(`get:${req.id}:timeout`, ctx.timeoutMs());
    seen.set(`get:${req.id}:request-id`, ctx.requestHeader.get("x-request-id"));
    seen.set(`get:${req.id}:user`, `${ctx.requestHeader.get("x-mesh-user-id")}/${ctx.requestHeader.get("x-mesh-user-role")}`);
    seen.set(`get:${req.id}:traceparent`, ctx.requestHeader.get("traceparent"));
    switch (req.id.startsWith("hang") ? "hang" : req.id) {
      case "boom":
        throw new Error("SELECT secret FROM users failed at /srv/app.ts:12");
      case "missing":
        throw notFound("shop.catalog.v1.Product", "missing");
      case "hang": {
        seen.set(`${req.id}:started`, true);
        const reason = await aborted(ctx.signal);
        seen.set(`${req.id}:aborted`, reason);
        throw reason;
      }
      case "flaky": {
        const left = unavailableLeft.get("flaky") ?? 0;
        seen.set("flaky:calls", ((seen.get("flaky:calls") as number) ?? 0) + 1);
        if (left > 0) {
          unavailableLeft.set("flaky", left - 1);
          throw new ConnectError("try again", Code.Unavailable);
        }
        break;
      }
      case "headers":
        ctx.responseHeader.set("x-served-by", "test");
        ctx.responseTrailer.set("x-items", "1");
        break;
      case "downstream": {
        // A call made inside a handler inherits deadline and metadata.
        const client = createMeshClient(CatalogService, `127.0.0.1:${server.port}`);
        // Asks for a minute: the inbound deadline must cap it.
        const res = await client.getProduct({ id: "leaf" }, { timeoutMs: 60_000 });
        return res;
      }
    }
    return { product: product(req.id) };
  },
  async createProduct(req) {
    if (req.product?.sku === "FLAKY") {
      seen.set("create:calls", ((seen.get("create:calls") as number) ?? 0) + 1);
      throw new ConnectError("try again", Code.Unavailable);
    }
    throw invalidArgument("product.sku", "must be 3-32 characters of A-Z, 0-9 and '-'", "FORMAT");
  },
  async batchGetProducts(req, ctx: HandlerContext) {
    // Echo identity and request metadata as seen by a downstream handler.
    seen.set(`batch:${req.skus[0]}:headers`, Object.fromEntries(ctx.requestHeader.entries()));
    seen.set(`batch:${req.skus[0]}:timeout`, ctx.timeoutMs());
    return { products: [], missingSkus: req.skus };
  },
  // listProducts is deliberately missing: UNIMPLEMENTED.
};

const testImpl: Partial<ServiceImpl<typeof TestService>> = {
  async *watchProducts(req, ctx) {
    for (let i = 0; i < req.pageSize; i++) {
      if (req.query === "fail" && i === 2) throw invalidArgument("query", "failed after two");
      yield product(`p${i}`);
    }
    if (req.query === "forever") {
      const reason = await aborted(ctx.signal);
      seen.set("watch:aborted", reason);
    }
  },
};

let server: MeshServer;

test.before(async () => {
  server = await startMeshServer({
    name: "test",
    host: "127.0.0.1",
    port: 0,
    services: [serve(CatalogService, catalogImpl), serve(TestService, testImpl)],
    onInternalError: (e) => seen.set("internal-error", e),
  });
});

test.after.always(async () => {
  closeMeshClients();
  transport?.close();
  await server?.close(100);
});

/**
 * Tests that are not about deadlines give calls 15 s: GetProduct's own 2 s
 * default is short on a machine busy running other suites.
 */
function generous(transport: Transport): Transport {
  return {
    unary: (method, signal, timeoutMs, header, input, values) =>
      transport.unary(method, signal, timeoutMs ?? 15_000, header, input, values),
    stream: (method, signal, timeoutMs, header, input, values) =>
      transport.stream(method, signal, timeoutMs ?? 15_000, header, input, values),
  };
}
let transport: ReturnType<typeof createMeshTransport> | undefined;
const client = () => {
  transport ??= createMeshTransport({ target: `127.0.0.1:${server.port}` });
  return createClient(CatalogService, generous(transport));
};
/** A client with the method's own default deadline. */
const plainClient = () => createMeshClient(CatalogService, `127.0.0.1:${server.port}`);

test("unary round trip keeps every field, across files (Money, Timestamp)", async (t) => {
  const res = await client().getProduct({ id: "p1" });
  t.is(res.product?.sku, "SKU-p1");
  t.is(res.product?.price?.amountMinor, 1999n);
  t.is(res.product?.price?.currencyCode, "EUR");
  t.is(res.product?.createTime?.seconds, 1_700_000_000n);
  t.deepEqual(res.product?.tags, ["a", "b"]);
});

test("response headers and trailers reach the client", async (t) => {
  let header: Headers | undefined;
  let trailer: Headers | undefined;
  await client().getProduct({ id: "headers" }, { onHeader: (h) => (header = h), onTrailer: (h) => (trailer = h) });
  t.is(header?.get("x-served-by"), "test");
  t.is(trailer?.get("x-items"), "1");
});

test("server streaming round trip", async (t) => {
  const stream = createMeshClient(TestService, `127.0.0.1:${server.port}`);
  const ids: string[] = [];
  for await (const p of stream.watchProducts({ pageSize: 5 })) ids.push(p.id);
  t.deepEqual(ids, ["p0", "p1", "p2", "p3", "p4"]);
});

test("a stream that fails midway delivers what came before, then the error with details", async (t) => {
  const stream = createMeshClient(TestService, `127.0.0.1:${server.port}`);
  const ids: string[] = [];
  const err = await t.throwsAsync(async () => {
    for await (const p of stream.watchProducts({ pageSize: 5, query: "fail" })) ids.push(p.id);
  });
  t.deepEqual(ids, ["p0", "p1"]);
  const ce = ConnectError.from(err);
  t.is(ce.code, Code.InvalidArgument);
  t.deepEqual(fieldViolations(ce), [{ field: "query", description: "failed after two", reason: "" }]);
});

test("a ConnectError keeps code, message and details on the wire", async (t) => {
  const err = await t.throwsAsync(client().createProduct({ product: { sku: "x" } }));
  const ce = ConnectError.from(err);
  t.is(ce.code, Code.InvalidArgument);
  t.is(ce.rawMessage, "product.sku: must be 3-32 characters of A-Z, 0-9 and '-'");
  t.deepEqual(fieldViolations(ce), [
    { field: "product.sku", description: "must be 3-32 characters of A-Z, 0-9 and '-'", reason: "FORMAT" },
  ]);

  const nf = ConnectError.from(await t.throwsAsync(client().getProduct({ id: "missing" })));
  t.is(nf.code, Code.NotFound);
  t.is(nf.findDetails(ResourceInfoSchema)[0]?.resourceName, "missing");
});

test("any other error is INTERNAL and leaks nothing", async (t) => {
  const ce = ConnectError.from(await t.throwsAsync(client().getProduct({ id: "boom" })));
  t.is(ce.code, Code.Internal);
  t.is(ce.rawMessage, "internal error");
  t.false(ce.message.includes("secret"));
  t.regex(String((seen.get("internal-error") as Error).message), /SELECT secret/);
});

test("a method without implementation answers UNIMPLEMENTED", async (t) => {
  const ce = ConnectError.from(await t.throwsAsync(client().listProducts({})));
  t.is(ce.code, Code.Unimplemented);
});

test("client- and bidi-streaming methods answer UNIMPLEMENTED and the server lives on", async (t) => {
  const raw = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
  const m = TestService.method;
  const upload = await new Promise<grpc.ServiceError | null>((resolve) => {
    const call = raw.makeClientStreamRequest(
      methodPath(m.uploadProducts),
      serializer(m.uploadProducts.input),
      deserializer(m.uploadProducts.output),
      (err) => resolve(err),
    );
    call.write(product("u1"));
    call.end();
  });
  t.is(upload?.code, grpc.status.UNIMPLEMENTED);

  const sync = await new Promise<grpc.StatusObject>((resolve) => {
    const call = raw.makeBidiStreamRequest(
      methodPath(m.syncProducts),
      serializer(m.syncProducts.input),
      deserializer(m.syncProducts.output),
    );
    call.on("error", () => {});
    call.on("data", () => {});
    call.on("status", resolve);
    call.write(product("s1"));
    call.end();
  });
  t.is(sync.code, grpc.status.UNIMPLEMENTED);
  raw.close();

  const res = await client().getProduct({ id: "alive" });
  t.is(res.product?.id, "alive");

  // And through the mesh client, too.
  const ce = ConnectError.from(
    await t.throwsAsync(async () => {
      const c = createMeshClient(TestService, `127.0.0.1:${server.port}`);
      for await (const _ of c.syncProducts((async function* () {})())) void _;
    }),
  );
  t.is(ce.code, Code.Unimplemented);
});

test("a deadline reaches the handler, aborts its signal and fails the call with DEADLINE_EXCEEDED", async (t) => {
  const ce = ConnectError.from(await t.throwsAsync(client().getProduct({ id: "hang" }, { timeoutMs: 1000 })));
  t.is(ce.code, Code.DeadlineExceeded);
  const timeout = seen.get("get:hang:timeout") as number;
  t.true(timeout >= 0 && timeout <= 1000, `handler saw timeoutMs ${timeout}`);
  // The handler's signal fired (deadline on the server, or the client's cancel).
  for (let i = 0; i < 250 && !seen.has("hang:aborted"); i++) await new Promise((r) => setTimeout(r, 20));
  const reason = ConnectError.from(seen.get("hang:aborted"));
  t.true([Code.DeadlineExceeded, Code.Canceled].includes(reason.code), `handler signal reason ${reason.code}`);
});

test("the method's (protomesh.v1.method).timeout is the default deadline", async (t) => {
  t.deepEqual(methodPolicyOf(CatalogService.method.getProduct), { idempotent: true, timeoutMs: 2000 });
  t.deepEqual(methodPolicyOf(CatalogService.method.createProduct), { idempotent: false, timeoutMs: 5000 });
  await plainClient().getProduct({ id: "default-deadline" });
  const timeout = seen.get("get:default-deadline:timeout") as number;
  t.true(timeout > 0 && timeout <= 2000, `handler saw timeoutMs ${timeout}`);
});

test("a call inside a handler inherits the remaining deadline and the request metadata", async (t) => {
  await client().getProduct(
    { id: "downstream" },
    {
      timeoutMs: 5000,
      headers: {
        "x-request-id": "req-42",
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-mesh-user-id": "u-9",
        "x-mesh-user-role": "admin",
        "x-not-propagated": "1",
      },
    },
  );
  const outer = seen.get("get:downstream:timeout") as number;
  const inner = seen.get("get:leaf:timeout") as number;
  // Without propagation the inner call would get the minute it asks for; a
  // few ms of slack for the millisecond rounding of grpc-timeout.
  t.true(inner > 0 && inner <= outer + 5 && outer <= 5000, `outer ${outer}, inner ${inner}`);
  t.is(seen.get("get:leaf:request-id"), "req-42");
  t.is(seen.get("get:leaf:user"), "u-9/admin");
  t.is(seen.get("get:leaf:traceparent"), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
});

test("identity and trace metadata pass through to the handler", async (t) => {
  await client().batchGetProducts(
    { skus: ["meta"] },
    { headers: { "x-mesh-user-id": "u-7", "x-mesh-user-role": "admin", "x-request-id": "r-1" } },
  );
  const headers = seen.get("batch:meta:headers") as Record<string, string>;
  t.is(headers["x-mesh-user-id"], "u-7");
  t.is(headers["x-mesh-user-role"], "admin");
  t.is(headers["x-request-id"], "r-1");
});

test("a client gets a request id when it sends none", async (t) => {
  await client().getProduct({ id: "no-request-id" });
  t.regex(String(seen.get("get:no-request-id:request-id")), /^[0-9a-f-]{36}$/);
});

test("client cancel reaches the handler as an aborted signal", async (t) => {
  const controller = new AbortController();
  const call = client().getProduct({ id: "hang-cancel" }, { signal: controller.signal, timeoutMs: 10_000 });
  for (let i = 0; i < 250 && !seen.has("hang-cancel:started"); i++) await new Promise((r) => setTimeout(r, 20));
  controller.abort();
  const ce = ConnectError.from(await t.throwsAsync(call));
  t.is(ce.code, Code.Canceled);
  for (let i = 0; i < 250 && !seen.has("hang-cancel:aborted"); i++) await new Promise((r) => setTimeout(r, 20));
  t.is(ConnectError.from(seen.get("hang-cancel:aborted")).code, Code.Canceled);
});

test("cancelling a server stream stops the handler", async (t) => {
  const c = createMeshClient(TestService, `127.0.0.1:${server.port}`);
  const controller = new AbortController();
  const ids: string[] = [];
  await t.throwsAsync(async () => {
    for await (const p of c.watchProducts({ pageSize: 2, query: "forever" }, { signal: controller.signal })) {
      ids.push(p.id);
      if (ids.length === 2) controller.abort();
    }
  });
  for (let i = 0; i < 250 && !seen.has("watch:aborted"); i++) await new Promise((r) => setTimeout(r, 20));
  t.true(seen.has("watch:aborted"));
});

test("idempotent methods are retried on UNAVAILABLE; others are not", async (t) => {
  unavailableLeft.set("flaky", 2);
  const res = await client().getProduct({ id: "flaky" });
  t.is(res.product?.id, "flaky");
  t.is(seen.get("flaky:calls"), 3);

  const ce = ConnectError.from(await t.throwsAsync(client().createProduct({ product: { sku: "FLAKY" } })));
  t.is(ce.code, Code.Unavailable);
  t.is(seen.get("create:calls"), 1);
});

test("an unreachable target is UNAVAILABLE", async (t) => {
  const transport = createMeshTransport({ target: "127.0.0.1:1", retry: { maxAttempts: 1 } });
  const { createClient } = await import("@connectrpc/connect");
  const c = createClient(CatalogService, transport);
  const ce = ConnectError.from(await t.throwsAsync(c.getProduct({ id: "x" })));
  t.is(ce.code, Code.Unavailable);
  transport.close();
});

test("server interceptors run around handlers and see request and response", async (t) => {
  const calls: string[] = [];
  const s = await startMeshServer({
    name: "intercepted",
    host: "127.0.0.1",
    services: [
      serve(CatalogService, {
        getProduct(req, ctx) {
          ctx.responseHeader.set("x-handler", "yes");
          return { product: { id: req.id } };
        },
      }),
    ],
    interceptors: [
      (next) => async (req) => {
        calls.push(`${req.method.name} ${req.header.get("x-request-id")}`);
        const res = await next(req);
        res.header.set("x-interceptor", "yes");
        return res;
      },
    ],
  });
  try {
    let header: Headers | undefined;
    const c = createMeshClient(CatalogService, `dns:///localhost:${s.port}`);
    const res = await c.getProduct({ id: "i1" }, { headers: { "x-request-id": "via-dns" }, onHeader: (h) => (header = h) });
    t.is(res.product?.id, "i1");
    t.deepEqual(calls, ["GetProduct via-dns"]);
    t.is(header?.get("x-interceptor"), "yes");
    t.is(header?.get("x-handler"), "yes");
  } finally {
    await s.close(100);
  }
});

test("mapError decides what a unary call's or a stream's failure is answered as", async (t) => {
  const outage = () => Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" });
  const s = await startMeshServer({
    name: "mapped",
    host: "127.0.0.1",
    services: [
      serve(CatalogService, {
        getProduct(req) {
          if (req.id === "down") throw outage();
          if (req.id === "bug") throw new Error("a plain bug");
          return { product: { id: req.id } };
        },
      }),
      serve(TestService, {
        async *watchProducts() {
          yield product("p0");
          throw outage();
        },
      }),
    ],
    mapError: databaseUnavailableError,
    onInternalError: () => {},
  });
  try {
    const c = createMeshClient(CatalogService, `127.0.0.1:${s.port}`, { retry: { maxAttempts: 1 } });
    t.is((await c.getProduct({ id: "ok" })).product?.id, "ok");
    const down = await t.throwsAsync(c.getProduct({ id: "down" }));
    t.is(ConnectError.from(down).code, Code.Unavailable);
    t.is(ConnectError.from(down).rawMessage, "database unavailable, try again later");
    const bug = await t.throwsAsync(c.getProduct({ id: "bug" }));
    t.is(ConnectError.from(bug).code, Code.Internal);
    const w = createMeshClient(TestService, `127.0.0.1:${s.port}`, { retry: { maxAttempts: 1 } });
    const ids: string[] = [];
    const streamed = await t.throwsAsync(async () => {
      for await (const p of w.watchProducts({ pageSize: 1 })) ids.push(p.id);
    });
    t.deepEqual(ids, ["p0"]);
    t.is(ConnectError.from(streamed).code, Code.Unavailable);
  } finally {
    await s.close(100);
  }
});

test("a server stream without interceptors gets the lazy context, and plain objects it yields are sent as messages", async (t) => {
  let lazy: boolean | undefined;
  const s = await startMeshServer({
    name: "lazy-stream",
    host: "127.0.0.1",
    services: [
      serve(TestService, {
        async *watchProducts(req, ctx) {
          // Nothing of the context was made up front: no response header until one is read.
          lazy = ctx instanceof MeshHandlerContext && ctx.touchedResponseHeader === undefined;
          ctx.responseTrailer.set("x-seen", req.query);
          yield { id: "init-1", name: "from an init object" };
          yield product("p1");
        },
      }),
    ],
  });
  try {
    const w = createMeshClient(TestService, `127.0.0.1:${s.port}`, { retry: { maxAttempts: 1 } });
    const got: string[] = [];
    let trailer: Headers | undefined;
    for await (const p of w.watchProducts({ query: "q1" }, { onTrailer: (h) => (trailer = h) })) got.push(`${p.id}:${p.name}`);
    t.deepEqual(got, ["init-1:from an init object", "p1:Product p1"]);
    t.true(lazy);
    t.is(trailer?.get("x-seen"), "q1");
  } finally {
    await s.close(100);
  }
});

test("close() ends server streams with UNAVAILABLE and refuses new calls", async (t) => {
  const s = await startMeshServer({ name: "closing", host: "127.0.0.1", services: [serve(TestService, testImpl)] });
  const c = createMeshClient(TestService, `127.0.0.1:${s.port}`, { retry: { maxAttempts: 1 } });
  const ids: string[] = [];
  const watching = (async () => {
    for await (const p of c.watchProducts({ pageSize: 1, query: "forever" })) ids.push(p.id);
  })();
  while (ids.length === 0) await new Promise((r) => setTimeout(r, 10));
  await s.close(2000);
  const err = ConnectError.from(await t.throwsAsync(watching));
  t.is(err.code, Code.Unavailable);
  t.deepEqual(ids, ["p0"]);
});

test("a message over maxMessageBytes is RESOURCE_EXHAUSTED, not a crash", async (t) => {
  const s = await startMeshServer({
    name: "small",
    host: "127.0.0.1",
    services: [serve(CatalogService, catalogImpl)],
    maxMessageBytes: 1024,
  });
  try {
    const c = createMeshClient(CatalogService, `127.0.0.1:${s.port}`);
    const ce = ConnectError.from(
      await t.throwsAsync(c.createProduct({ product: { sku: "BIG-1", description: "x".repeat(4096) } })),
    );
    t.is(ce.code, Code.ResourceExhausted);
    t.is((await c.getProduct({ id: "small-ok" })).product?.id, "small-ok");
  } finally {
    await s.close(100);
  }
});
