// Every protocol, unary and server streaming, through the gateway to a real
// upstream: Connect JSON and binary (HTTP/1.1 and h2c), gRPC-Web, and gRPC
// both on the frame fast path and through connect-node.
import test from "ava";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { EchoService } from "../gen/protomesh/testing/v1/echo_pb.js";
import type { MeshServer } from "../mesh/server.js";
import { parseConfig } from "./config.js";
import type { Gateway } from "./server.js";
import { startEcho, startEchoGateway, token } from "./testing/harness.js";

let upstream: MeshServer;
let gw: Gateway;
let slow: Gateway; // no gRPC fast path: gRPC through connect-node
let viaMesh: Gateway; // upstream calls through mesh/client (grpc-js) instead of the h2 transport

test.before(async () => {
  upstream = await startEcho();
  // A slow refill (3 per minute) so the rate-limit tests do not depend on timing.
  gw = await startEchoGateway(upstream.port, {
    config: parseConfig({
      methods: { "protomesh.testing.v1.EchoService/WhoAmI": { rateLimit: { requests: 3, periodMs: 60_000, burst: 3 } } },
    }),
  });
  slow = await startEchoGateway(upstream.port, { grpcFastPath: false });
  viaMesh = await startEchoGateway(upstream.port, { transportFor: "mesh" });
});
test.after.always(async () => {
  await gw?.close();
  await slow?.close();
  await viaMesh?.close();
  await upstream?.close(0);
});

const protocols: Array<[string, () => Transport]> = [
  ["Connect JSON over HTTP/1.1", () => createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" })],
  ["Connect binary over HTTP/1.1", () => createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1", useBinaryFormat: true })],
  ["Connect JSON over h2c", () => createConnectTransport({ baseUrl: gw.url, httpVersion: "2" })],
  ["gRPC-Web over HTTP/1.1", () => createGrpcWebTransport({ baseUrl: gw.url, httpVersion: "1.1" })],
  ["gRPC-Web binary over h2c", () => createGrpcWebTransport({ baseUrl: gw.url, httpVersion: "2", useBinaryFormat: true })],
  ["gRPC (frame fast path)", () => createGrpcTransport({ baseUrl: gw.url })],
  ["gRPC (via connect-node)", () => createGrpcTransport({ baseUrl: slow.url })],
  ["Connect JSON, upstream via mesh/client", () => createConnectTransport({ baseUrl: viaMesh.url, httpVersion: "1.1" })],
];

for (const [name, make] of protocols) {
  test(`${name}: unary`, async (t) => {
    const client = createClient(EchoService, make());
    const res = await client.echo({ id: "u1", count: 3, nested: { label: "n" } });
    t.is(res.request?.id, "u1");
    t.is(res.request?.count, 3);
    t.is(res.request?.nested?.label, "n");
    t.truthy(res.metadata["x-request-id"]);
  });

  test(`${name}: server streaming`, async (t) => {
    const client = createClient(EchoService, make());
    const got: number[] = [];
    for await (const m of client.echoStream({ id: "s", count: 4 })) got.push(m.index);
    t.deepEqual(got, [0, 1, 2, 3]);
  });

  test(`${name}: upstream NOT_FOUND arrives as NOT_FOUND (connect-es #1582)`, async (t) => {
    const client = createClient(EchoService, make());
    const e = await t.throwsAsync(client.fail({ failCode: "NOT_FOUND" }));
    const err = ConnectError.from(e);
    t.is(err.code, Code.NotFound);
    t.is(err.rawMessage, "echo failed as asked: NOT_FOUND");
    // Over Connect, no upstream gRPC metadata may leak into the response.
    if (name.startsWith("Connect")) {
      t.is(err.metadata.get("grpc-status"), null);
      t.is(err.metadata.get("grpc-message"), null);
    }
  });

  test(`${name}: error details survive`, async (t) => {
    const client = createClient(EchoService, make());
    const err = ConnectError.from(await t.throwsAsync(client.fail({ failCode: "INVALID_ARGUMENT" })));
    t.is(err.code, Code.InvalidArgument);
    t.is(err.details.length, 1);
  });

  test(`${name}: mid-stream error after the messages`, async (t) => {
    const client = createClient(EchoService, make());
    const got: number[] = [];
    const e = await t.throwsAsync(async () => {
      for await (const m of client.echoStream({ id: "s", count: 2, failCode: "DATA_LOSS" })) got.push(m.index);
    });
    t.deepEqual(got, [0, 1]);
    t.is(ConnectError.from(e).code, Code.DataLoss);
  });

  test(`${name}: auth required, token accepted, identity forwarded`, async (t) => {
    const client = createClient(EchoService, make());
    const e = await t.throwsAsync(client.adminOnly({}));
    t.is(ConnectError.from(e).code, Code.Unauthenticated);
    const denied = await t.throwsAsync(client.adminOnly({}, { headers: { authorization: `Bearer ${await token("u", "user")}` } }));
    t.is(ConnectError.from(denied).code, Code.PermissionDenied);
    const ok = await client.adminOnly({}, { headers: { authorization: `Bearer ${await token("a1", "admin")}`, "x-mesh-user-id": "spoof" } });
    t.is(ok.metadata["x-mesh-user-id"], "a1");
    t.is(ok.metadata["x-mesh-user-role"], "admin");
  });

  test(`${name}: internal methods are not exposed`, async (t) => {
    const client = createClient(EchoService, make());
    const e = await t.throwsAsync(client.internal({}));
    t.is(ConnectError.from(e).code, Code.Unimplemented);
  });

  test(`${name}: method timeout gives DEADLINE_EXCEEDED`, async (t) => {
    const client = createClient(EchoService, make());
    const e = await t.throwsAsync(client.fail({ failCode: "OK", delay: { seconds: 3n } }));
    t.is(ConnectError.from(e).code, Code.DeadlineExceeded);
  });
}

test("gRPC fast path: rate limit answers RESOURCE_EXHAUSTED with the rate-limit headers", async (t) => {
  const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
  const bearer = { authorization: `Bearer ${await token("rl-user", "user")}` };
  for (let i = 0; i < 3; i++) await client.whoAmI({}, { headers: bearer });
  const e = ConnectError.from(await t.throwsAsync(client.whoAmI({}, { headers: bearer })));
  t.is(e.code, Code.ResourceExhausted);
  t.regex(e.metadata.get("retry-after") ?? "", /^\d+$/);
  t.regex(e.metadata.get("ratelimit") ?? "", /r=0/);
});

test("Connect: rate limit is HTTP 429 with Retry-After", async (t) => {
  const bearer = { authorization: `Bearer ${await token("rl-connect", "user")}`, "content-type": "application/json" };
  const call = () => fetch(`${gw.url}/protomesh.testing.v1.EchoService/WhoAmI`, { method: "POST", headers: bearer, body: "{}" });
  for (let i = 0; i < 3; i++) t.is((await call()).status, 200);
  const res = await call();
  t.is(res.status, 429);
  t.truthy(res.headers.get("retry-after"));
  t.like(await res.json(), { code: "resource_exhausted" });
});

test("CORS preflight and actual response for a browser Connect client", async (t) => {
  const g = await startEchoGateway(upstream.port, {
    config: { ...(await import("./config.js")).defaultConfig, cors: { allowedOrigins: ["https://shop.example"] } },
  });
  try {
    const pre = await fetch(`${g.url}/protomesh.testing.v1.EchoService/Echo`, {
      method: "OPTIONS",
      headers: { origin: "https://shop.example", "access-control-request-method": "POST", "access-control-request-headers": "content-type,connect-protocol-version" },
    });
    t.is(pre.status, 204);
    t.is(pre.headers.get("access-control-allow-origin"), "https://shop.example");
    t.regex(pre.headers.get("access-control-allow-headers") ?? "", /Connect-Protocol-Version/);
    const bad = await fetch(`${g.url}/v1/echo/x`, { method: "OPTIONS", headers: { origin: "https://evil.example", "access-control-request-method": "GET" } });
    t.is(bad.status, 403);
    const res = await fetch(`${g.url}/protomesh.testing.v1.EchoService/Echo`, {
      method: "POST",
      headers: { origin: "https://shop.example", "content-type": "application/json" },
      body: "{}",
    });
    t.is(res.headers.get("access-control-allow-origin"), "https://shop.example");
    t.regex(res.headers.get("access-control-expose-headers") ?? "", /Grpc-Status/);
  } finally {
    await g.close();
  }
});

test("client deadlines (Connect-Timeout-Ms, grpc-timeout) are honored and capped at the method timeout", async (t) => {
  for (const transport of [
    createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    createGrpcTransport({ baseUrl: gw.url }),
  ]) {
    const client = createClient(EchoService, transport);
    // Honored: the upstream sees at most the client's 900 ms (on a very busy
    // machine the call may even run out of it, which honors it as well).
    try {
      const short = await client.fail({ failCode: "OK" }, { timeoutMs: 900 });
      t.true(Number(short.metadata["timeout-ms"]) <= 900, short.metadata["timeout-ms"]);
    } catch (e) {
      t.is(ConnectError.from(e).code, Code.DeadlineExceeded);
    }
    const long = await client.fail({ failCode: "OK" }, { timeoutMs: 60_000 });
    t.true(Number(long.metadata["timeout-ms"]) <= 1000, long.metadata["timeout-ms"]);
  }
});
