// Resilience with real processes: the breaker opening when the upstream
// process is killed and closing when it returns, retries of idempotent
// methods, and a hot reload of a limit while load runs.
import test from "ava";
import http2 from "node:http2";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EchoService } from "../gen/protomesh/testing/v1/echo_pb.js";
import { defaultConfig, parseConfig } from "./config.js";
import { freePort, spawnEcho, startEcho, startEchoGateway } from "./testing/harness.js";

test.serial("breaker: opens when the upstream process dies, fails fast, closes after it returns", async (t) => {
  const port = await freePort();
  let child: ChildProcess | undefined = await spawnEcho(port);
  // open_for 1 s, min 4 requests, 50 % (from echo.proto's service option).
  const gw = await startEchoGateway(port);
  try {
    t.is((await fetch(`${gw.url}/v1/echo/alive`)).status, 200);
    child.kill("SIGKILL");
    await new Promise((r) => child!.once("exit", r));
    const killedAt = Date.now();
    child = undefined;

    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push((await fetch(`${gw.url}/v1/echo/dead?i=${i}`.replace("?i=", "?count="))).status);
    t.true(statuses.every((s) => s === 503), statuses.join(","));
    t.is(gw.breakers.state("echo"), "open");
    t.log(`opened after ${Date.now() - killedAt} ms`);

    // Open: fails fast with Retry-After, over REST and gRPC alike.
    const fast = await fetch(`${gw.url}/v1/echo/x`);
    t.is(fast.status, 503);
    t.is(fast.headers.get("retry-after"), "1");
    t.regex(((await fast.json()) as { message: string }).message, /circuit breaker open/);
    const grpc = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    t.is(ConnectError.from(await t.throwsAsync(grpc.echo({}))).code, Code.Unavailable);

    // Back: after open_for the half-open probe succeeds and the breaker closes.
    child = await spawnEcho(port);
    let ok = false;
    for (let i = 0; i < 100 && !ok; i++) {
      await new Promise((r) => setTimeout(r, 100));
      ok = (await fetch(`${gw.url}/v1/echo/back`)).status === 200;
    }
    t.true(ok, "the gateway reaches the upstream again");
    t.log(`closed ${Date.now() - killedAt} ms after the kill`);
    t.is(gw.breakers.state("echo"), "closed");
    t.is((await grpc.echo({ id: "g" })).request?.id, "g");
  } finally {
    child?.kill("SIGKILL");
    await gw.close();
  }
});

test.serial("breaker: client errors (NOT_FOUND, INVALID_ARGUMENT) never open it", async (t) => {
  const up = await startEcho();
  const gw = await startEchoGateway(up.port);
  try {
    for (let i = 0; i < 30; i++) await fetch(`${gw.url}/v1/fail/${i % 2 ? "NOT_FOUND" : "INVALID_ARGUMENT"}`);
    t.is(gw.breakers.state("echo"), "closed");
    t.is((await fetch(`${gw.url}/v1/echo/x`)).status, 200);
  } finally {
    await gw.close();
    await up.close(0);
  }
});

test.serial("retries: an idempotent method is retried on UNAVAILABLE, over REST and the gRPC fast path", async (t) => {
  const state = { flaky: new Map<string, number>(), calls: 0 };
  const up = await startEcho(state);
  const gw = await startEchoGateway(up.port);
  try {
    const res = await fetch(`${gw.url}/v1/flaky/r1?failTimes=2`);
    t.is(res.status, 200);
    t.is(state.flaky.get("r1"), 3);
    const grpc = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    t.is((await grpc.flaky({ id: "g1", failTimes: 2 })).request?.id, "g1");
    t.is(state.flaky.get("g1"), 3);
    // Beyond the attempts: the UNAVAILABLE reaches the client.
    t.is((await fetch(`${gw.url}/v1/flaky/r2?failTimes=5`)).status, 503);
    t.is(state.flaky.get("r2"), 3);
  } finally {
    await gw.close();
    await up.close(0);
  }
});

test.serial("retries: a method not marked idempotent is not retried", async (t) => {
  const state = { flaky: new Map<string, number>(), calls: 0 };
  const up = await startEcho(state);
  const gw = await startEchoGateway(up.port, {
    config: parseConfig({ methods: { "protomesh.testing.v1.EchoService/Flaky": { idempotent: false } } }),
  });
  try {
    t.is((await fetch(`${gw.url}/v1/flaky/n1?failTimes=1`)).status, 503);
    t.is(state.flaky.get("n1"), 1);
  } finally {
    await gw.close();
    await up.close(0);
  }
});

test.serial("hot reload: a new limit applies while a load runs, and no request is dropped", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "gw-config-"));
  const file = join(dir, "gateway.json");
  const method = "protomesh.testing.v1.EchoService/Limited";
  writeFileSync(file, JSON.stringify({ methods: { [method]: { rateLimit: { requests: 1000, periodMs: 60_000 } } } }));
  const up = await startEcho();
  const gw = await startEchoGateway(up.port, { configPath: file, config: defaultConfig });
  gw.setConfig(parseConfig({ methods: { [method]: { rateLimit: { requests: 1000, periodMs: 60_000 } } } }));
  try {
    const statuses: number[] = [];
    const afterReload: number[] = []; // statuses of requests started once the new limit was in force
    let applied = false;
    let running = true;
    const worker = async () => {
      while (running) {
        const startedAfter = applied;
        const r = await fetch(`${gw.url}/v1/limited?delay=0.02s`).catch(() => undefined);
        statuses.push(r ? r.status : 0);
        if (startedAfter) afterReload.push(r ? r.status : 0);
        await r?.text();
      }
    };
    const workers = Array.from({ length: 4 }, worker);
    while (statuses.length < 40) await new Promise((r) => setTimeout(r, 10));
    t.true(statuses.every((s) => s === 200), "all pass under the high limit");
    // Tighten it: a burst of 5 per minute for everyone from this IP.
    writeFileSync(file, JSON.stringify({ methods: { [method]: { rateLimit: { requests: 5, periodMs: 60_000 } } } }));
    const until = Date.now() + 10_000;
    while (gw.pipeline.currentConfig.methods[method]?.rateLimit?.requests !== 5 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 10));
    }
    applied = true;
    while (afterReload.length < 20 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    running = false;
    await Promise.all(workers);
    t.true(afterReload.length >= 20, "the reload was seen");
    // Requests admitted before the reload keep their policy; those after it
    // share the new bucket: at most its burst passes, the rest get 429.
    t.true(afterReload.filter((s) => s === 200).length <= 5, afterReload.join(","));
    // (In completion order a 200 may follow 429s: responses overtake each other.)
    t.is(afterReload.filter((s) => s === 429).length, afterReload.length - afterReload.filter((s) => s === 200).length, afterReload.join(","));
    t.false(statuses.includes(0), "no request dropped (no connection error)");
  } finally {
    await gw.close();
    await up.close(0);
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial("hot reload: an invalid file keeps the current config", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "gw-config-"));
  const file = join(dir, "gateway.yaml");
  writeFileSync(file, "limits:\n  maxBodyBytes: 1048576\n");
  const up = await startEcho();
  const gw = await startEchoGateway(up.port, { configPath: file });
  try {
    writeFileSync(file, "limits: [this is not valid\n");
    await new Promise((r) => setTimeout(r, 300));
    t.is((await fetch(`${gw.url}/v1/echo/still-ok`)).status, 200);
    t.is(gw.pipeline.currentConfig.limits.maxBodyBytes, 1048576);
  } finally {
    await gw.close();
    await up.close(0);
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial("breaker: clients canceling calls never open it (gRPC fast path, REST)", async (t) => {
  const up = await startEcho();
  const gw = await startEchoGateway(up.port);
  try {
    const grpc = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    for (let i = 0; i < 12; i++) {
      const ac = new AbortController();
      const call = grpc.echo({ id: `c${i}`, delay: { seconds: 5n } }, { signal: ac.signal });
      setTimeout(() => ac.abort(), 50);
      await call.catch(() => undefined);
    }
    for (let i = 0; i < 12; i++) {
      await fetch(`${gw.url}/v1/echo/r${i}?delay=5s`, { signal: AbortSignal.timeout(50) }).catch(() => undefined);
    }
    await new Promise((r) => setTimeout(r, 100));
    t.is(gw.breakers.state("echo"), "closed");
    t.is((await grpc.echo({ id: "after" })).request?.id, "after");
  } finally {
    await gw.close();
    await up.close(0);
  }
});

test.serial("graceful close: calls in flight finish (REST over HTTP/1.1, gRPC over HTTP/2)", async (t) => {
  const up = await startEcho();
  const gw = await startEchoGateway(up.port);
  const grpc = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
  try {
    const rest = fetch(`${gw.url}/v1/echo/slow?delay=0.5s`);
    const rpc = grpc.echo({ id: "slow-rpc", delay: { nanos: 500_000_000 } });
    await new Promise((r) => setTimeout(r, 100));
    const closing = gw.close(5000);
    t.is((await rest).status, 200);
    t.is((await rpc).request?.id, "slow-rpc");
    await closing;
  } finally {
    await up.close(0);
  }
});

test.serial("client resets (RST_STREAM INTERNAL_ERROR) mid-call do not take the gateway down", async (t) => {
  const { create, toBinary } = await import("@bufbuild/protobuf");
  const { EchoRequestSchema } = await import("../gen/protomesh/testing/v1/echo_pb.js");
  const up = await startEcho();
  const gw = await startEchoGateway(up.port);
  try {
    const body = toBinary(EchoRequestSchema, create(EchoRequestSchema, { id: "rst", delay: { seconds: 2n } }));
    const framed = Buffer.concat([Buffer.from([0, 0, 0, 0, body.length]), Buffer.from(body)]);
    const session = http2.connect(gw.url);
    session.on("error", () => {});
    for (const path of ["/protomesh.testing.v1.EchoService/Echo", "/protomesh.testing.v1.EchoService/Fail"]) {
      const s = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
      s.on("error", () => {});
      s.end(framed);
      await new Promise((r) => setTimeout(r, 100));
      s.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    }
    // The same over REST and Connect (the compat layer and connect-node).
    const others: Array<[http2.OutgoingHttpHeaders, string | undefined]> = [
      [{ ":method": "GET", ":path": "/v1/echo/rst?delay=2s" }, undefined],
      [{ ":method": "POST", ":path": "/protomesh.testing.v1.EchoService/Echo", "content-type": "application/json" }, '{"id":"rst","delay":"2s"}'],
    ];
    for (const [headers, payload] of others) {
      const s = session.request(headers);
      s.on("error", () => {});
      s.end(payload);
      await new Promise((r) => setTimeout(r, 100));
      s.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    }
    await new Promise((r) => setTimeout(r, 200));
    session.close();
    const grpc = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    t.is((await grpc.echo({ id: "still-here" })).request?.id, "still-here");
    t.is((await fetch(`${gw.url}/v1/echo/still-here`)).status, 200);
    t.is(gw.breakers.state("echo"), "closed");
  } finally {
    await gw.close();
    await up.close(0);
  }
});

test.serial("breaker: a long stream as the half-open probe is judged when it starts, so the calls behind it do not wait for its end", async (t) => {
  const up = await startEcho();
  const gw = await startEchoGateway(up.port);
  try {
    // Open it: INTERNAL counts as an upstream failure (4 calls, 50 %, open for 1 s).
    for (let i = 0; i < 6; i++) await (await fetch(`${gw.url}/v1/fail/INTERNAL`)).text();
    t.is(gw.breakers.state("echo"), "open");
    await new Promise((r) => setTimeout(r, 1_100));

    // The probe: a gRPC stream whose first message (and so its response headers) comes after
    // 1.5 s, and which ends 1.5 s later.
    const grpc = createClient(EchoService, createGrpcTransport({ baseUrl: gw.url }));
    const streamed: number[] = [];
    const stream = (async () => {
      for await (const m of grpc.echoStream({ id: "probe", count: 2, delay: { seconds: 1n, nanos: 500_000_000 } })) streamed.push(m.index);
    })();
    await new Promise((r) => setTimeout(r, 100));
    // Behind it, a unary call: answered once the stream has started, not after it ended.
    const started = Date.now();
    // Judged at its end, the probe would hold it ~2.9 s.
    t.is((await grpc.echo({ id: "behind" }, { timeoutMs: 2_400 })).request?.id, "behind");
    t.log(`answered after ${Date.now() - started} ms`);
    t.is(gw.breakers.state("echo"), "closed");
    await stream;
    t.deepEqual(streamed, [0, 1], "the probe stream itself ran to its end");
  } finally {
    await gw.close();
    await up.close(0);
  }
});
