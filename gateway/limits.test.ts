// Edge limits: header size, body size and time, concurrent HTTP/2 streams.
import test from "ava";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { MeshServer } from "../mesh/server.js";
import { parseConfig } from "./config.js";
import type { Gateway } from "./server.js";
import { startEcho, startEchoGateway } from "./testing/harness.js";

let upstream: MeshServer;
let gw: Gateway;

test.before(async () => {
  upstream = await startEcho();
  gw = await startEchoGateway(upstream.port, {
    config: parseConfig({
      limits: { maxHeaderBytes: 4096, maxBodyBytes: 1024, maxConcurrentStreams: 7, bodyTimeoutMs: 300 },
    }),
  });
});
test.after.always(async () => {
  await gw?.close();
  await upstream?.close(0);
});

test("HTTP/1.1: a header block over the limit is 431", async (t) => {
  const res = await fetch(`${gw.url}/v1/echo/x`, { headers: { "x-big": "a".repeat(8000) } });
  t.is(res.status, 431);
});

test("HTTP/2: the limits are advertised in SETTINGS", async (t) => {
  const session = http2.connect(gw.url);
  try {
    const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
    t.is(settings.maxConcurrentStreams, 7);
    t.is(settings.maxHeaderListSize, 4096);
  } finally {
    session.close();
  }
});

test("a body over the limit is 413 (REST and Connect)", async (t) => {
  const body = JSON.stringify({ id: "x".repeat(2000) });
  const rest = await fetch(`${gw.url}/v1/echo`, { method: "POST", headers: { "content-type": "application/json" }, body });
  t.is(rest.status, 413);
  const connect = await fetch(`${gw.url}/protomesh.testing.v1.EchoService/Echo`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  t.false(connect.ok);
  t.like(await connect.json(), { code: "resource_exhausted" });
});

test("a client that sends its body too slowly is cut off with 408", async (t) => {
  const port = new URL(gw.url).port;
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, method: "POST", path: "/v1/echo", headers: { "content-type": "application/json", "content-length": "100" } },
      (res) => {
        resolve(res.statusCode ?? 0);
        res.resume();
        req.destroy();
      },
    );
    req.on("error", reject);
    req.write('{"id":'); // and then nothing
  });
  t.is(status, 408);
});

test("gRPC fast path: a message over the body limit is RESOURCE_EXHAUSTED (buffered and streamed requests)", async (t) => {
  const { createClient, ConnectError, Code } = await import("@connectrpc/connect");
  const { createGrpcTransport } = await import("@connectrpc/connect-node");
  const { EchoService } = await import("../gen/protomesh/testing/v1/echo_pb.js");
  const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
  const big = "x".repeat(4000);
  // Echo is idempotent (its request is buffered for retries); Fail is not (streamed through).
  t.is(ConnectError.from(await t.throwsAsync(client.echo({ id: big }))).code, Code.ResourceExhausted);
  t.is(ConnectError.from(await t.throwsAsync(client.fail({ id: big }))).code, Code.ResourceExhausted);
  t.is((await client.echo({ id: "small" })).request?.id, "small");
});

// Serial: it counts on the echo service's circuit breaker (4 calls, 50 %) seeing only its calls.
test.serial("gRPC fast path: requests refused as too large are the client's failures, not the upstream's, and end their streams: the breaker stays closed", async (t) => {
  const { createClient, ConnectError, Code } = await import("@connectrpc/connect");
  const { createGrpcTransport } = await import("@connectrpc/connect-node");
  const { EchoService } = await import("../gen/protomesh/testing/v1/echo_pb.js");
  const client = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
  const big = "x".repeat(64_000); // streamed through (Fail is not idempotent) in several frames
  // More than the connection's 7 concurrent streams: a refused stream left open would block the next call.
  for (let i = 0; i < 10; i++) t.is(ConnectError.from(await t.throwsAsync(client.fail({ id: big }))).code, Code.ResourceExhausted);
  // An open breaker would answer UNAVAILABLE here.
  t.is((await client.echo({ id: "small" }, { timeoutMs: 5_000 })).request?.id, "small");
});

test("a request target the URL parser refuses is a 400, and the gateway goes on serving", async (t) => {
  const port = Number(new URL(gw.url).port);
  // Node's HTTP parser accepts these targets; new URL() throws on them.
  for (const target of ["//[", "//a:99999999/x"]) {
    const head = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(port, "127.0.0.1", () => socket.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
      let got = "";
      socket.on("data", (d) => (got += d.toString()));
      socket.on("end", () => resolve(got));
      socket.on("error", reject);
    });
    t.regex(head, /^HTTP\/1\.1 400 /, target);
    t.regex(head, /malformed request target/);
  }
  t.is((await fetch(`${gw.url}/healthz`)).status, 200);
});
