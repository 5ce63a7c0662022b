// The spans and metrics mesh/server and mesh/client make for themselves (rpc-telemetry.ts),
// in-process over real TCP: server streaming, a client-side deadline, untraced health
// probes, and the target parsing behind server.address / server.port.
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import type { ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { EchoService } from "../../gen/protomesh/testing/v1/echo_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { serve, startMeshServer, type MeshServer } from "../server.js";
import { closeMeshClients, createMeshClient } from "../client.js";
import { startTracing, type TracingHandle } from "./tracing.js";
import { metricsRegistry } from "./metrics.js";
import { targetAddress } from "./rpc-telemetry.js";

let tracing: TracingHandle;
let server: MeshServer;

test.before(async () => {
  tracing = await startTracing({ exporter: "memory", instrumentations: [] });
  server = await startMeshServer({
    name: "rpc-telemetry-test",
    host: "127.0.0.1",
    port: 0,
    reflection: false,
    logger: { info() {}, warn() {}, error() {} },
    services: [
      serve(EchoService, {
        async *echoStream(req) {
          for (let i = 0; i < 2; i++) yield { request: req, index: i };
          if (req.failCode) throw new ConnectError("stream broke", Code.Internal);
        },
        async flaky(req) {
          await new Promise((r) => setTimeout(r, Number(req.name) || 0));
          return { request: req };
        },
      }),
    ],
  });
});
test.after.always(async () => {
  closeMeshClients();
  await server?.close(100);
  await tracing?.shutdown();
});

const spansOf = (method: string): ReadableSpan[] =>
  tracing.finishedSpans().filter((s) => s.attributes["rpc.method"] === method);

async function eventually<T>(read: () => T, ok: (v: T) => boolean): Promise<T> {
  for (let i = 0; i < 100; i++) {
    const v = read();
    if (ok(v)) return v;
    await new Promise((r) => setTimeout(r, 20));
  }
  return read();
}

test.serial("a server stream has a CLIENT and a SERVER span; a failing one is INTERNAL and ERROR on both sides", async (t) => {
  const client = createMeshClient(EchoService, server.address);
  const got: number[] = [];
  for await (const r of client.echoStream({ name: "ok" })) got.push(r.index);
  t.deepEqual(got, [0, 1]);
  await t.throwsAsync(
    async () => {
      for await (const _ of client.echoStream({ name: "bad", failCode: "INTERNAL" })) void _;
    },
    { message: /stream broke/ },
  );
  const spans = await eventually(() => spansOf("EchoStream"), (s) => s.length === 4);
  t.is(spans.length, 4);
  const ok = spans.filter((s) => s.attributes["rpc.grpc.status_code"] === 0);
  const failed = spans.filter((s) => s.attributes["rpc.grpc.status_code"] === 13);
  t.deepEqual(ok.map((s) => s.kind).sort(), [SpanKind.SERVER, SpanKind.CLIENT]);
  t.deepEqual(failed.map((s) => s.status.code), [SpanStatusCode.ERROR, SpanStatusCode.ERROR]);
  const [okClient, okServer] = [ok.find((s) => s.kind === SpanKind.CLIENT)!, ok.find((s) => s.kind === SpanKind.SERVER)!];
  t.is(okServer.parentSpanContext?.spanId, okClient.spanContext().spanId);

  const text = await metricsRegistry.metrics();
  t.regex(text, /grpc_server_handled_total\{[^}]*grpc_method="EchoStream"[^}]*grpc_code="INTERNAL"[^}]*\} 1/);
  t.regex(text, /grpc_client_handled_total\{[^}]*grpc_method="EchoStream"[^}]*grpc_code="OK"[^}]*\} 1/);
});

test.serial("a call past its deadline: DEADLINE_EXCEEDED on the client span, an error status", async (t) => {
  const client = createMeshClient(EchoService, server.address);
  await t.throwsAsync(client.flaky({ name: "300" }, { timeoutMs: 50 }), { instanceOf: ConnectError });
  const [clientSpan] = await eventually(
    () => spansOf("Flaky").filter((s) => s.kind === SpanKind.CLIENT),
    (s) => s.length > 0,
  );
  t.is(clientSpan?.attributes["rpc.grpc.status_code"], 4);
  t.is(clientSpan?.status.code, SpanStatusCode.ERROR);
});

test.serial("health probes make no spans", async (t) => {
  const before = tracing.finishedSpans().length;
  const health = createMeshClient(Health, server.address);
  const res = await health.check({ service: "" });
  t.is(res.status, 1); // SERVING
  await new Promise((r) => setTimeout(r, 50));
  t.is(tracing.finishedSpans().length, before);
});

test("server.address and server.port come from the target", (t) => {
  t.deepEqual(targetAddress("127.0.0.1:5001"), { address: "127.0.0.1", port: 5001 });
  t.deepEqual(targetAddress("dns:///catalog.shop.svc:5001"), { address: "catalog.shop.svc", port: 5001 });
  t.deepEqual(targetAddress("dns://8.8.8.8/catalog:5001"), { address: "catalog", port: 5001 });
  t.deepEqual(targetAddress("mesh:///catalog"), { address: "catalog", port: undefined });
  t.deepEqual(targetAddress("[::1]:5001"), { address: "::1", port: 5001 });
  t.deepEqual(targetAddress("catalog:5001"), { address: "catalog", port: 5001 });
});
