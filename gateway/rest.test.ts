/* eslint-disable @typescript-eslint/no-explicit-any */
// REST conformance: every google.api.http rule shape, error mapping and edge
// status, through a real gateway to a real upstream (the echo service on
// mesh/server over grpc-js).
import test from "ava";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { EchoService } from "../gen/protomesh/testing/v1/echo_pb.js";
import type { MeshServer } from "../mesh/server.js";
import type { Gateway } from "./server.js";
import { startEcho, startEchoGateway, token } from "./testing/harness.js";

let upstream: MeshServer;
let gw: Gateway;

test.before(async () => {
  upstream = await startEcho();
  gw = await startEchoGateway(upstream.port);
});
test.after.always(async () => {
  await gw?.close();
  await upstream?.close(0);
});

type Case = {
  name: string;
  method?: string;
  path: string;
  body?: unknown;
  rawBody?: string;
  headers?: Record<string, string>;
  status: number;
  /** Expected subset of the JSON body. */
  json?: unknown;
  /** Expected response headers (lower-case names; RegExp or exact). */
  resHeaders?: Record<string, string | RegExp>;
};

const cases: Case[] = [
  // Rule shapes.
  { name: "GET path var + query", path: "/v1/echo/a1?count=2&tags=x&tags=y&color=COLOR_RED", status: 200, json: { request: { id: "a1", count: 2, tags: ["x", "y"], color: "COLOR_RED" } } },
  { name: "nested query + WKT", path: "/v1/echo/a?nested.label=n&nested.inner.on=true&at=2024-01-02T03:04:05Z&wait=2s&note=hi&limit=3", status: 200, json: { request: { id: "a", nested: { label: "n", inner: { on: true } }, at: "2024-01-02T03:04:05Z", wait: "2s", note: "hi", limit: 3 } } },
  { name: "enum by number", path: "/v1/echo/a?color=2&colors=1&colors=COLOR_GREEN", status: 200, json: { request: { color: "COLOR_GREEN", colors: ["COLOR_RED", "COLOR_GREEN"] } } },
  { name: "POST body *", method: "POST", path: "/v1/echo", body: { id: "b", big: "12345678901234567", labels: { k: "v" } }, status: 200, json: { request: { id: "b", big: "12345678901234567", labels: { k: "v" } } } },
  { name: "PUT body * with path", method: "PUT", path: "/v1/echo/p", body: { count: 1 }, status: 200, json: { request: { id: "p", count: 1 } } },
  { name: "DELETE", method: "DELETE", path: "/v1/echo/d", status: 200, json: { request: { id: "d" } } },
  { name: "custom verb :cancel", method: "POST", path: "/v1/echo/c1:cancel", body: {}, status: 200, json: { request: { id: "c1" } } },
  { name: "custom method SEARCH", method: "SEARCH", path: "/v1/echo?count=4", status: 200, json: { request: { count: 4 } } },
  { name: "{name=shelves/*/books/*}", path: "/v1/shelves/s1/books/b2", status: 200, json: { request: { name: "shelves/s1/books/b2" } } },
  { name: "{path=**}", path: "/v1/files/a/b/c.txt", status: 200, json: { request: { path: "a/b/c.txt" } } },
  { name: "{path=**} then literal", path: "/v1/tail/x/y/meta", status: 200, json: { request: { path: "x/y" } } },
  { name: "PATCH nested path + body field", method: "PATCH", path: "/v1/nested/lbl?count=7", body: { value: 9 }, status: 200, json: { request: { nested: { label: "lbl", value: 9 }, count: 7 } } },
  { name: "response_body", path: "/v1/payload/r1?count=5", status: 200, json: { id: "r1", count: 5 } },
  { name: "proto field names accepted in body", method: "POST", path: "/v1/echo", body: { snake_case_field: "s" }, status: 200, json: { request: { snakeCaseField: "s" } } },
  { name: "HEAD", method: "HEAD", path: "/v1/echo/h", status: 200 },

  // Edge errors, before any upstream call.
  { name: "no route", path: "/v1/nowhere", status: 404, json: { code: "not_found" } },
  { name: "internal method not exposed", path: "/v1/internal", status: 404 },
  { name: "wrong method", method: "PATCH", path: "/v1/echo/x", status: 405, resHeaders: { allow: "DELETE, GET, PUT" } },
  { name: "unknown query param", path: "/v1/echo/x?bogus=1", status: 400, json: { code: "invalid_argument", message: /"bogus"/ } },
  { name: "wrong type", path: "/v1/echo/x?count=ten", status: 400, json: { message: /query parameter "count"/ } },
  { name: "bad timestamp", path: "/v1/echo/x?at=noon", status: 400, json: { message: /"at"/ } },
  { name: "malformed JSON", method: "POST", path: "/v1/echo", rawBody: "{oops", headers: { "content-type": "application/json" }, status: 400, json: { message: /malformed JSON/ } },
  { name: "unknown body field", method: "POST", path: "/v1/echo", body: { nope: 1 }, status: 400, json: { message: /nope/ } },
  { name: "unsupported content type", method: "POST", path: "/v1/echo", rawBody: "id=1", headers: { "content-type": "application/x-www-form-urlencoded" }, status: 415 },
  { name: "body too large", method: "POST", path: "/v1/echo", rawBody: JSON.stringify({ id: "x".repeat(2 << 20) }), headers: { "content-type": "application/json" }, status: 413 },

  // Upstream errors: code -> HTTP status, JSON {code, message, details}.
  { name: "INVALID_ARGUMENT with field violations", path: "/v1/fail/INVALID_ARGUMENT", status: 400, json: { code: "invalid_argument", details: [{ type: "google.rpc.BadRequest", debug: { fieldViolations: [{ field: "fail_code" }] } }] } },
  { name: "UNAUTHENTICATED", path: "/v1/fail/UNAUTHENTICATED", status: 401, resHeaders: { "www-authenticate": /^Bearer/ } },
  { name: "PERMISSION_DENIED", path: "/v1/fail/PERMISSION_DENIED", status: 403, json: { code: "permission_denied" } },
  { name: "NOT_FOUND", path: "/v1/fail/NOT_FOUND", status: 404, json: { code: "not_found", message: "echo failed as asked: NOT_FOUND" } },
  { name: "ALREADY_EXISTS", path: "/v1/fail/ALREADY_EXISTS", status: 409 },
  { name: "ABORTED", path: "/v1/fail/ABORTED", status: 409 },
  { name: "RESOURCE_EXHAUSTED", path: "/v1/fail/RESOURCE_EXHAUSTED", status: 429 },
  { name: "FAILED_PRECONDITION", path: "/v1/fail/FAILED_PRECONDITION", status: 400 },
  { name: "CANCELLED", path: "/v1/fail/CANCELLED", status: 499 },
  { name: "UNIMPLEMENTED", path: "/v1/fail/UNIMPLEMENTED", status: 501 },
  { name: "UNAVAILABLE", path: "/v1/fail/UNAVAILABLE", status: 503 },
  { name: "DEADLINE_EXCEEDED", path: "/v1/fail/DEADLINE_EXCEEDED", status: 504 },
  { name: "DATA_LOSS", path: "/v1/fail/DATA_LOSS", status: 500 },
  { name: "method timeout (1 s) -> 504", path: "/v1/fail/OK?delay=2s", status: 504, json: { code: "deadline_exceeded" } },

  // Auth.
  { name: "auth required: no token", path: "/v1/whoami", status: 401, resHeaders: { "www-authenticate": 'Bearer realm="protomesh"' } },
  { name: "auth: garbage token", path: "/v1/whoami", headers: { authorization: "Bearer x.y.z" }, status: 401, resHeaders: { "www-authenticate": /invalid_token/ } },
];

for (const c of cases) {
  test(`REST ${c.name}`, async (t) => {
    const headers: Record<string, string> = { ...c.headers };
    let body: string | undefined = c.rawBody;
    if (c.body !== undefined) {
      body = JSON.stringify(c.body);
      headers["content-type"] ??= "application/json";
    }
    const res = await fetch(gw.url + c.path, { method: c.method ?? "GET", headers, body });
    const text = await res.text();
    t.is(res.status, c.status, text);
    for (const [k, v] of Object.entries(c.resHeaders ?? {})) {
      const got = res.headers.get(k) ?? "";
      if (v instanceof RegExp) t.regex(got, v);
      else t.is(got, v);
    }
    if (c.json !== undefined) t.true(subset(JSON.parse(text), c.json), text);
  });
}

test("REST identity: the verified user goes upstream, client-sent identity headers never do", async (t) => {
  const res = await fetch(`${gw.url}/v1/whoami`, {
    headers: { authorization: `Bearer ${await token("u-7", "user")}`, "x-mesh-user-role": "admin", "x-mesh-user-id": "root" },
  });
  t.is(res.status, 200);
  const j = (await res.json()) as any;
  t.is(j.metadata["x-mesh-user-id"], "u-7");
  t.is(j.metadata["x-mesh-user-role"], "user");
  const anon = (await (await fetch(`${gw.url}/v1/echo/x`, { headers: { "x-mesh-user-id": "root", "x-mesh-user-role": "admin" } })).json()) as any;
  t.is(anon.metadata["x-mesh-user-id"], undefined);
  t.is(anon.metadata["x-mesh-user-role"], undefined);
});

test("REST auth: admin method with a user token is 403, with an admin token 200", async (t) => {
  const asUser = await fetch(`${gw.url}/v1/admin`, { method: "POST", headers: { authorization: `Bearer ${await token("u", "user")}`, "content-type": "application/json" }, body: "{}" });
  t.is(asUser.status, 403);
  const asAdmin = await fetch(`${gw.url}/v1/admin`, { method: "POST", headers: { authorization: `Bearer ${await token("a", "admin")}`, "content-type": "application/json" }, body: "{}" });
  t.is(asAdmin.status, 200);
});

test("REST deadline: a client's shorter X-Timeout-Ms / grpc-timeout reaches upstream capped", async (t) => {
  const j = (await (await fetch(`${gw.url}/v1/fail/OK`, { headers: { "grpc-timeout": "100m" } })).json()) as any;
  t.true(Number(j.metadata["timeout-ms"]) <= 100);
  const capped = (await (await fetch(`${gw.url}/v1/fail/OK`, { headers: { "grpc-timeout": "60S" } })).json()) as any;
  t.true(Number(capped.metadata["timeout-ms"]) <= 1000, "capped at the method timeout (1 s)");
});

test("REST streaming as NDJSON, a mid-stream error as the last line", async (t) => {
  const res = await fetch(`${gw.url}/v1/echo/s/stream?count=3&failCode=ABORTED`);
  t.is(res.status, 200);
  t.is(res.headers.get("content-type"), "application/x-ndjson");
  const lines = (await res.text()).trim().split("\n").map((l) => JSON.parse(l));
  t.is(lines.length, 4);
  t.deepEqual(lines.slice(0, 3).map((l) => l.result.index ?? 0), [0, 1, 2]);
  t.like(lines[3], { error: { code: "aborted" } });
});

test("REST streaming as Server-Sent Events with Accept: text/event-stream", async (t) => {
  const res = await fetch(`${gw.url}/v1/echo/s/stream?count=2&failCode=INTERNAL`, { headers: { accept: "text/event-stream" } });
  t.is(res.headers.get("content-type"), "text/event-stream");
  const events = (await res.text()).trim().split("\n\n");
  t.is(events.length, 3);
  t.true(events[0].startsWith("data: "));
  t.is(JSON.parse(events[1].slice(6)).index, 1);
  t.regex(events[2], /^event: error\ndata: /);
  t.like(JSON.parse(events[2].split("\ndata: ")[1]), { code: "internal" });
});

test("REST streaming that completes has no error line", async (t) => {
  const text = await (await fetch(`${gw.url}/v1/echo/s/stream?count=2`)).text();
  t.deepEqual(text.trim().split("\n").map((l) => Object.keys(JSON.parse(l))[0]), ["result", "result"]);
});

test("a server stream that sends nothing ends cleanly (REST, Connect and gRPC-Web)", async (t) => {
  // grpc-js answers such a stream trailers-only: its status comes in the response headers.
  const rest = await fetch(`${gw.url}/v1/echo/s/stream?count=0`);
  t.is(rest.status, 200);
  t.is((await rest.text()).trim(), "", "no result and no error line");
  const events = await (await fetch(`${gw.url}/v1/echo/s/stream?count=0`, { headers: { accept: "text/event-stream" } })).text();
  t.notRegex(events, /event: error/);
  for (const transport of [
    createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    createGrpcWebTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
  ]) {
    const got: number[] = [];
    for await (const m of createClient(EchoService, transport).echoStream({ id: "s", count: 0 })) got.push(m.index);
    t.deepEqual(got, []);
  }
});

test("/openapi.json describes every binding", async (t) => {
  const doc = (await (await fetch(`${gw.url}/openapi.json`)).json()) as any;
  t.is(doc.openapi, "3.1.0");
  t.truthy(doc.paths["/v1/echo/{id}"].get);
  t.truthy(doc.paths["/v1/echo/{id}:cancel"].post);
  t.truthy(doc.paths["/v1/echo"].search);
  t.truthy(doc.paths["/v1/{name}"].get);
  t.truthy(doc.paths["/v1/nested/{nested.label}"].patch.requestBody);
  t.deepEqual(doc.paths["/v1/whoami"].get.security, [{ bearer: [] }]);
  t.falsy(doc.paths["/v1/internal"]);
  const q = doc.paths["/v1/echo/{id}"].get.parameters.map((p: { name: string }) => p.name);
  t.true(q.includes("nested.inner.on"));
  t.truthy(doc.components.schemas["protomesh.testing.v1.EchoRequest"]);
});

test("/healthz and /readyz", async (t) => {
  t.is((await fetch(`${gw.url}/healthz`)).status, 200);
  t.is((await fetch(`${gw.url}/readyz`)).status, 200);
});

/** True when `want` (with RegExps for strings) is a subset of `got`. */
function subset(got: unknown, want: unknown): boolean {
  if (want instanceof RegExp) return typeof got === "string" && want.test(got);
  if (Array.isArray(want)) return Array.isArray(got) && want.every((w, i) => subset(got[i], w));
  if (want && typeof want === "object") {
    return !!got && typeof got === "object" && Object.entries(want).every(([k, v]) => subset((got as Record<string, unknown>)[k], v));
  }
  return got === want;
}

test("REST with jsonStyle.useProtoFieldName: responses use the proto field names", async (t) => {
  const { parseConfig } = await import("./config.js");
  const g = await startEchoGateway(upstream.port, { config: parseConfig({ jsonStyle: { useProtoFieldName: true, emitDefaults: true } }) });
  try {
    const j = (await (await fetch(`${g.url}/v1/payload/p?snakeCaseField=v`)).json()) as Record<string, unknown>;
    t.is(j.snake_case_field, "v");
    t.is(j.fail_times, 0, "defaults emitted");
    t.false("snakeCaseField" in j);
  } finally {
    await g.close();
  }
});
