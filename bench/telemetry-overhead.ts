/**
 * What telemetry costs a unary call: throughput and memory of the same process with the
 * telemetry register entry off, on (spans, RPC metrics, no exporter) and on with OTLP export
 * to a local sink, measured in one run, rounds interleaved so a busy machine hurts all modes
 * alike.
 *
 *   npx tsx bench/telemetry-overhead.ts            # 3 rounds x 5 s per mode, 32 calls in flight
 *   ROUNDS=5 SECONDS=8 CONCURRENCY=64 PARALLEL=0 npx tsx bench/telemetry-overhead.ts
 *
 * Each round runs a fresh child process (`node --import=tsx --import=./mesh/telemetry/register.ts
 * bench/telemetry-overhead.ts` with BENCH_ROLE=worker) that serves CatalogService.GetProduct
 * through mesh/server and calls it through mesh/client: both sides of the call pay.
 */
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";

interface WorkerResult {
  calls: number;
  errors: number;
  seconds: number;
  p50Ms: number;
  p99Ms: number;
  rssMb: number;
  heapUsedMb: number;
  rssBeforeMb: number;
  /** CPU time (user + system) of the process per completed call: steadier than calls/s on a shared machine. */
  cpuUsPerCall: number;
}

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SECONDS = Number(process.env.SECONDS ?? 5);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 32);
const PARALLEL = (process.env.PARALLEL ?? "1") !== "0";

async function worker(): Promise<void> {
  const { create } = await import("@bufbuild/protobuf");
  const { CatalogService, ProductSchema } = await import("../gen/shop/catalog/v1/catalog_pb.js");
  const { serve, startMeshServer } = await import("../mesh/server.js");
  const { createMeshClient, closeMeshClients } = await import("../mesh/client.js");
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const rssBefore = process.memoryUsage().rss;

  const product = create(ProductSchema, { id: "p-1", sku: "SKU-1", name: "Bench product", price: { currencyCode: "EUR", amountMinor: 1999n } });
  const server = await startMeshServer({
    name: "bench",
    host: "127.0.0.1",
    port: 0,
    reflection: false,
    services: [serve(CatalogService, { getProduct: async () => ({ product }) })],
    logger: { info() {}, warn() {}, error() {} },
  });
  const client = createMeshClient(CatalogService, `127.0.0.1:${server.port}`);

  const run = async (ms: number, latencies?: number[]) => {
    let calls = 0;
    let errors = 0;
    const end = performance.now() + ms;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (performance.now() < end) {
          const t0 = performance.now();
          try {
            await client.getProduct({ id: "p-1" });
            calls++;
          } catch {
            errors++;
          }
          latencies?.push(performance.now() - t0);
        }
      }),
    );
    return { calls, errors };
  };

  await run(1_000); // warm-up: JIT, connections
  const latencies: number[] = [];
  const started = performance.now();
  const cpuBefore = process.cpuUsage();
  const { calls, errors } = await run(SECONDS * 1_000, latencies);
  const cpu = process.cpuUsage(cpuBefore);
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const pick = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  gc?.();
  const mem = process.memoryUsage();
  const result: WorkerResult = {
    calls,
    errors,
    seconds,
    p50Ms: pick(0.5),
    p99Ms: pick(0.99),
    rssMb: mem.rss / 2 ** 20,
    heapUsedMb: mem.heapUsed / 2 ** 20,
    rssBeforeMb: rssBefore / 2 ** 20,
    cpuUsPerCall: (cpu.user + cpu.system) / Math.max(1, calls),
  };
  closeMeshClients();
  await server.close(1_000);
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(0);
}

type Mode = "off" | "on" | "on+otlp";

function runWorker(mode: Mode, otlpEndpoint: string): Promise<WorkerResult> {
  const root = fileURLToPath(new URL("../", import.meta.url));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    BENCH_ROLE: "worker",
    OTEL_SERVICE_NAME: "bench",
    METRICS_PORT: "0",
    LOG_LEVEL: "warn",
    PROTOMESH_TELEMETRY: mode === "off" ? "off" : "on",
  };
  delete env.OTEL_EXPORTER_OTLP_ENDPOINT;
  delete env.OTEL_TRACES_EXPORTER;
  if (mode === "on+otlp") env.OTEL_EXPORTER_OTLP_ENDPOINT = otlpEndpoint;
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--expose-gc", "--import=tsx", "--import=./mesh/telemetry/register.ts", "bench/telemetry-overhead.ts"],
      { cwd: root, env, stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("error", reject);
    child.on("exit", (code) => {
      const last = out.trim().split("\n").pop() ?? "";
      try {
        resolve(JSON.parse(last) as WorkerResult);
      } catch {
        reject(new Error(`worker (${mode}) exited ${code} without a result: ${out.slice(-500)}`));
      }
    });
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
};

async function main(): Promise<void> {
  // A stand-in OTLP/HTTP collector: accepts and drops the export requests, counting bytes.
  let exportedBytes = 0;
  let exportRequests = 0;
  const sink = createServer((req, res) => {
    req.on("data", (d: Buffer) => (exportedBytes += d.length));
    req.on("end", () => {
      exportRequests++;
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise<void>((r) => sink.listen(0, "127.0.0.1", r));
  const endpoint = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`;

  const modes: Mode[] = ["off", "on", "on+otlp"];
  const results: Record<Mode, WorkerResult[]> = { off: [], on: [], "on+otlp": [] };
  console.log(
    `unary CatalogService.GetProduct over mesh/server + mesh/client, ${CONCURRENCY} in flight, ${ROUNDS} rounds x ${SECONDS} s per mode, modes ${PARALLEL ? "side by side" : "one after another"}`,
  );
  for (let round = 1; round <= ROUNDS; round++) {
    const order = round % 2 ? modes : [...modes].reverse();
    // PARALLEL (default): the modes run at the same time, so a busy machine slows them alike;
    // PARALLEL=0 runs them one after the other (a quiet machine, one core each is not needed).
    const rs = PARALLEL
      ? await Promise.all(order.map((mode) => runWorker(mode, endpoint)))
      : await order.reduce<Promise<WorkerResult[]>>(async (acc, mode) => [...(await acc), await runWorker(mode, endpoint)], Promise.resolve([]));
    for (const [i, mode] of order.entries()) {
      const r = rs[i]!;
      results[mode].push(r);
      console.log(
        `round ${round} ${mode.padEnd(8)} ${(r.calls / r.seconds).toFixed(0).padStart(6)} calls/s  ${r.cpuUsPerCall.toFixed(0).padStart(5)} µs CPU/call  p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms  rss ${r.rssMb.toFixed(1)} MB  heap ${r.heapUsedMb.toFixed(1)} MB  errors ${r.errors}`,
      );
    }
  }
  sink.close();

  const summary = modes.map((mode) => {
    const rs = results[mode];
    return {
      mode,
      rps: median(rs.map((r) => r.calls / r.seconds)),
      p50: median(rs.map((r) => r.p50Ms)),
      p99: median(rs.map((r) => r.p99Ms)),
      rss: median(rs.map((r) => r.rssMb)),
      rssBefore: median(rs.map((r) => r.rssBeforeMb)),
      heap: median(rs.map((r) => r.heapUsedMb)),
      cpu: median(rs.map((r) => r.cpuUsPerCall)),
    };
  });
  const off = summary[0]!;
  console.log("\nmedians");
  console.log("mode      calls/s   vs off  µs CPU/call  vs off   p50 ms  p99 ms  rss at start  rss at end  heap used (after gc)");
  for (const s of summary) {
    const delta = ((s.rps / off.rps - 1) * 100).toFixed(1);
    console.log(
      `${s.mode.padEnd(8)} ${s.rps.toFixed(0).padStart(8)}  ${(s === off ? "" : `${delta}%`).padStart(7)}  ${s.cpu.toFixed(0).padStart(11)}  ${(s === off ? "" : `+${((s.cpu / off.cpu - 1) * 100).toFixed(1)}%`).padStart(7)}  ${s.p50.toFixed(2).padStart(6)}  ${s.p99.toFixed(2).padStart(6)}  ${s.rssBefore.toFixed(1).padStart(9)} MB  ${s.rss.toFixed(1).padStart(7)} MB  ${s.heap.toFixed(1).padStart(6)} MB`,
    );
  }
  for (const s of summary.slice(1)) {
    console.log(
      `telemetry ${s.mode}: ${((1 - s.rps / off.rps) * 100).toFixed(1)} % fewer calls/s, +${((s.cpu / off.cpu - 1) * 100).toFixed(1)} % CPU per call, +${(s.rss - off.rss).toFixed(1)} MB RSS, +${(s.heap - off.heap).toFixed(1)} MB heap`,
    );
  }
  console.log(`OTLP sink received ${exportRequests} export requests, ${(exportedBytes / 2 ** 20).toFixed(1)} MB`);

  // The telemetry work of one call, alone and in this process (no network, no grpc-js): what
  // the instrumentation does on both sides (two spans, inject + extract of traceparent) and
  // what the RPC-metrics processor does when they end. Steadier than the A/B above on a busy
  // machine, and comparable with its off-mode CPU per call.
  const perCall = await isolatedTelemetryCost();
  console.log(
    `isolated telemetry work per call (client + server span, propagation, RPC metrics): ${perCall.toFixed(1)} µs CPU = ${((perCall / off.cpu) * 100).toFixed(1)} % of the off-mode CPU per call measured above`,
  );
}

async function isolatedTelemetryCost(): Promise<number> {
  const { startTracing } = await import("../mesh/telemetry/tracing.js");
  const { RpcMetricsSpanProcessor } = await import("../mesh/telemetry/metrics.js");
  const { context, propagation, trace, SpanKind } = await import("@opentelemetry/api");
  await startTracing({ exporter: "none", instrumentations: [], spanProcessors: [new RpcMetricsSpanProcessor()] });
  const tracer = trace.getTracer("bench");
  const one = () => {
    const client = tracer.startSpan("grpc.shop.catalog.v1.CatalogService/GetProduct", {
      kind: SpanKind.CLIENT,
      attributes: { "rpc.system": "grpc", "rpc.service": "shop.catalog.v1.CatalogService", "rpc.method": "GetProduct" },
    });
    const metadata: Record<string, string> = {};
    propagation.inject(trace.setSpan(context.active(), client), metadata);
    const parent = propagation.extract(context.active(), metadata);
    const server = tracer.startSpan(
      "grpc.shop.catalog.v1.CatalogService/GetProduct",
      { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc", "rpc.service": "shop.catalog.v1.CatalogService", "rpc.method": "GetProduct" } },
      parent,
    );
    context.with(trace.setSpan(parent, server), () => undefined);
    server.setAttribute("rpc.grpc.status_code", 0);
    server.end();
    client.setAttribute("rpc.grpc.status_code", 0);
    client.end();
  };
  for (let i = 0; i < 20_000; i++) one(); // warm-up
  const n = 200_000;
  const cpu = process.cpuUsage();
  for (let i = 0; i < n; i++) one();
  const used = process.cpuUsage(cpu);
  return (used.user + used.system) / n;
}

if (process.env.BENCH_ROLE === "worker") await worker();
else await main();
