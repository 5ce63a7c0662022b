// Spans must really appear through the ESM loader hook: run a child process the way a
// service runs (`--import=tsx --import=./mesh/telemetry/register.ts`), make gRPC calls, and
// read back what it recorded. The same run checks logs and /metrics from that process.
import test from "ava";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";

const run = promisify(execFile);
const root = fileURLToPath(new URL("../../", import.meta.url));

interface Report {
  results: { code: number; body?: string }[];
  spans: {
    name: string;
    kind: number;
    traceId: string;
    spanId: string;
    parentSpanId?: string;
    attributes: Record<string, unknown>;
    status?: { code: number; message?: string };
  }[];
  lines: string[];
  metrics: string;
  exporter: string;
}

async function runFixture(env: Record<string, string>): Promise<Report> {
  const { stdout } = await run(
    process.execPath,
    ["--import=tsx", "--import=./mesh/telemetry/register.ts", "mesh/telemetry/fixtures/grpc-echo.ts"],
    { cwd: root, env: { ...process.env, METRICS_PORT: "0", OTEL_SERVICE_NAME: "echo-fixture", ...env }, timeout: 90_000 },
  );
  return JSON.parse(stdout.trim().split("\n").pop()!) as Report;
}

const SERVER = 1; // SpanKind.SERVER
const CLIENT = 2; // SpanKind.CLIENT

test("with the register entry, a mesh gRPC call yields client and server spans of one trace", async (t) => {
  t.timeout(120_000); // a child process loads tsx, OpenTelemetry and grpc-js: slow on a busy machine
  const report = await runFixture({ OTEL_TRACES_EXPORTER: "memory" });
  t.deepEqual(report.results, [{ code: 0, body: "hello" }, { code: 5 }]);
  t.is(report.exporter, "memory");

  const ok = report.spans.filter((s) => s.attributes["rpc.grpc.status_code"] === 0);
  const server = ok.find((s) => s.kind === SERVER);
  const client = ok.find((s) => s.kind === CLIENT);
  t.truthy(server, "server span");
  t.truthy(client, "client span");
  t.is(server!.traceId, client!.traceId);
  t.is(server!.parentSpanId, client!.spanId, "server span is the child of the client span");
  t.is(server!.name, "protomesh.testing.v1.EchoService/Echo");
  t.like(server!.attributes, { "rpc.system": "grpc", "rpc.service": "protomesh.testing.v1.EchoService", "rpc.method": "Echo" });
  t.like(client!.attributes, { "rpc.system": "grpc", "rpc.method": "Echo", "server.address": "127.0.0.1" });
  t.is(typeof client!.attributes["server.port"], "number");
  t.is(server!.status?.code ?? 0, 0, "OK leaves the status unset");

  const failed = report.spans.filter((s) => s.attributes["rpc.grpc.status_code"] === 5);
  t.is(failed.length, 2, "the NOT_FOUND call has both spans too");
  t.not(failed[0]!.traceId, server!.traceId, "a second root call starts a second trace");
  // Semantic conventions: any non-OK code is an error for the caller; NOT_FOUND is the
  // server doing its job.
  t.like(failed.find((s) => s.kind === CLIENT)!.status, { code: 2, message: "no such thing" });
  t.is(failed.find((s) => s.kind === SERVER)!.status?.code ?? 0, 0);

  // The log line written inside the handler carries that server span's ids and the request id.
  const line = report.lines.map((l) => JSON.parse(l)).find((l) => l.request_id === "req-hello");
  t.truthy(line);
  t.is(line.trace_id, server!.traceId);
  t.is(line.span_id, server!.spanId);
  t.is(line.service_name, "echo-fixture");
  t.is(line.authorization, "[redacted]");
  t.false(report.lines.join("\n").includes("secret-token"));
});

test("with nothing exported, the RPC counters move by code and trace ids still reach logs and the callee", async (t) => {
  t.timeout(120_000); // a child process loads tsx, OpenTelemetry and grpc-js: slow on a busy machine
  const { metrics, lines, spans, exporter } = await runFixture({ OTEL_TRACES_EXPORTER: "none" });
  t.is(exporter, "none");
  t.is(spans.length, 0);
  // Non-recording spans still have ids: the handler's log line carries its SERVER span's
  // ids, in the trace of the traceparent the client sent (a sampled root).
  const line = lines.map((l) => JSON.parse(l)).find((l) => l.request_id === "req-hello");
  const [, traceId, parentId, flags] = String(line.traceparent).split("-");
  t.regex(line.trace_id, /^[0-9a-f]{32}$/);
  t.is(line.trace_id, traceId);
  t.regex(line.span_id, /^[0-9a-f]{16}$/);
  t.not(line.span_id, parentId, "the server span is a child of the client span, not the same span");
  t.is(flags, "01");

  const has = (re: RegExp) => t.regex(metrics, re);
  const labels = (code: string) => `(?=[^}]*grpc_service="protomesh\\.testing\\.v1\\.EchoService")(?=[^}]*grpc_method="Echo")(?=[^}]*grpc_code="${code}")`;
  has(new RegExp(`^grpc_server_handled_total\\{${labels("OK")}[^}]*\\} 1$`, "m"));
  has(new RegExp(`^grpc_server_handled_total\\{${labels("NOT_FOUND")}[^}]*\\} 1$`, "m"));
  has(new RegExp(`^grpc_client_handled_total\\{${labels("OK")}[^}]*\\} 1$`, "m"));
  has(new RegExp(`^grpc_client_handling_seconds_count\\{${labels("NOT_FOUND")}[^}]*\\} 1$`, "m"));
  has(/^nodejs_eventloop_lag_seconds\{[^}]*service="echo-fixture"[^}]*\} [0-9.e-]+$/m);
  has(/^process_resident_memory_bytes/m);
});

test("without telemetry nothing is recorded (the hook and SDK are what make spans)", async (t) => {
  t.timeout(120_000); // a child process loads tsx, OpenTelemetry and grpc-js: slow on a busy machine
  const report = await runFixture({ PROTOMESH_TELEMETRY: "off", OTEL_TRACES_EXPORTER: "memory" });
  t.deepEqual(report.results, [{ code: 0, body: "hello" }, { code: 5 }]);
  t.is(report.exporter, "off");
  t.is(report.spans.length, 0);
  const line = JSON.parse(report.lines[0]!);
  t.is(line.trace_id, undefined);
  t.is(line.request_id, "req-hello");
});

test("through mesh/server and mesh/client, a nested call is one trace: client > server > client > server", async (t) => {
  t.timeout(120_000); // a child process loads tsx, OpenTelemetry and grpc-js: slow on a busy machine
  const { stdout } = await run(
    process.execPath,
    ["--import=tsx", "--import=./mesh/telemetry/register.ts", "mesh/telemetry/fixtures/mesh-chain.ts"],
    { cwd: root, env: { ...process.env, METRICS_PORT: "off", OTEL_TRACES_EXPORTER: "memory", OTEL_SERVICE_NAME: "chain" }, timeout: 90_000 },
  );
  const report = JSON.parse(stdout.trim().split("\n").pop()!) as { answer: string; spans: Report["spans"]; lines: string[] };
  t.is(report.answer, "from back");
  t.is(report.spans.length, 4);
  t.is(new Set(report.spans.map((s) => s.traceId)).size, 1, "one trace id");
  const root_ = report.spans.find((s) => !s.parentSpanId)!;
  t.is(root_.kind, CLIENT);
  const child = (parent: { spanId: string }) => report.spans.find((s) => s.parentSpanId === parent.spanId)!;
  const frontServer = child(root_);
  const backClient = child(frontServer);
  const backServer = child(backClient);
  t.deepEqual([frontServer.kind, backClient.kind, backServer.kind], [SERVER, CLIENT, SERVER]);
  t.is(backServer.attributes["rpc.service"], "shop.catalog.v1.CatalogService");

  const [front, back] = report.lines.map((l) => JSON.parse(l));
  t.like(front, { msg: "front handling", request_id: "req-chain", trace_id: root_.traceId, span_id: frontServer.spanId });
  t.like(back, { msg: "back handled", request_id: "req-chain", trace_id: root_.traceId, span_id: backServer.spanId });
});
