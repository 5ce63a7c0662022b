/**
 * What telemetry costs a unary call: throughput and memory of the same process with the
 * telemetry register entry off, on (spans, RPC metrics, no exporter) and on with OTLP export
 * to a local sink, measured in one run, rounds interleaved so a busy machine hurts all modes
 * alike.
 *
 *   npx tsx bench/telemetry-overhead.ts            # 3 rounds x 5 s per mode, 32 calls in flight
 *   ROUNDS=5 SECONDS=8 CONCURRENCY=64 PARALLEL=0 npx tsx bench/telemetry-overhead.ts
 *   MODES=off,on ROUNDS=9 SECONDS=3 npx tsx bench/telemetry-overhead.ts   # more, shorter rounds
 *   HOP=mid MODES=off,on PARALLEL=0 npx tsx bench/telemetry-overhead.ts     # a call made inside a handler (see HOP)
 *
 * PARALLEL=1 (default) runs the modes of a round side by side: on a shared machine the
 * scheduler gives each the same CPU, so the calls/s ratio is the CPU cost ratio and noise
 * from other work hits both sides alike. PARALLEL=0 runs them one after another.
 *
 * Each round runs a fresh child process (`node --import=tsx --import=./mesh/telemetry/register.ts
 * bench/telemetry-overhead.ts` with BENCH_ROLE=worker) that serves CatalogService.GetProduct
 * through mesh/server and calls it through mesh/client: both sides of the call pay, and the
 * CPU per call is the whole process's (client + server + telemetry).
 *
 * It prints, per mode, the calls/s ratio against "off" (per round, then the median), the
 * CPU µs per call, and the memory telemetry adds: RSS once started (modules loaded, after a
 * GC), RSS at the end, and heap used after a GC at the end. The goal is the calls/s
 * ratio: at most 10 % fewer with telemetry on.
 *
 * TOGGLE=0 skips the in-process on/off slices (WorkerResult.toggled), so a worker run alone
 * under --cpu-prof profiles only the measured load:
 *   TOGGLE=0 BENCH_ROLE=worker PROTOMESH_TELEMETRY=on METRICS_PORT=0 node --cpu-prof \
 *     --import=tsx --import=./mesh/telemetry/register.ts bench/telemetry-overhead.ts
 * PROFILE_DIR=dir profiles only the measured window of every worker (see startWindowProfile);
 * with PROFILE_HEAP=1 it samples allocations instead of CPU.
 */
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
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
  /** On-CPU time of the main (JavaScript) thread per call, from /proc schedstat (ns precision); GC helper threads excluded. */
  mainCpuUsPerCall: number;
  /**
   * Modes with telemetry only: after the measurement, the same process alternates slices
   * with mesh's RPC telemetry (spans, traceparent, RPC metrics) installed and removed;
   * main-thread CPU µs per call in each. Immune to other work on the machine, but it
   * leaves out what the process pays either way (SDK loaded, context manager, /metrics).
   */
  toggled?: { withUs: number; withoutUs: number; ratio: number };
}

const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SECONDS = Number(process.env.SECONDS ?? 5);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 32);
/**
 * HOP=mid: every call carries a traceparent of its own, as a call made inside a handler
 * does (mesh/client forwards the inbound one when telemetry is off, and replaces it with its
 * CLIENT span's when on). Default HOP=edge: a top-level call, which carries one only with
 * telemetry on, so it pays for moving the header too (the worst case, and the figure).
 */
const HOP = process.env.HOP === "mid" ? "mid" : "edge";
const PARALLEL = (process.env.PARALLEL ?? "1") !== "0";

/** A fresh, valid W3C traceparent (a different inbound request each call; HPACK cannot index it). */
function inboundTraceparent(): string {
  const hex = randomUUID().replaceAll("-", "");
  return `00-${hex}-${hex.slice(0, 16)}-01`;
}

/** On-CPU nanoseconds of this process's main thread so far (Linux); 0 elsewhere. */
async function mainThreadCpuNs(): Promise<number> {
  try {
    return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]);
  } catch {
    return 0;
  }
}

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
            await client.getProduct({ id: "p-1" }, HOP === "mid" ? { headers: { traceparent: inboundTraceparent() } } : undefined);
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
  const profiler = await startWindowProfile();
  const latencies: number[] = [];
  const started = performance.now();
  const cpuBefore = process.cpuUsage();
  const mainBefore = await mainThreadCpuNs();
  const { calls, errors } = await run(SECONDS * 1_000, latencies);
  const cpu = process.cpuUsage(cpuBefore);
  const mainNs = (await mainThreadCpuNs()) - mainBefore;
  const seconds = (performance.now() - started) / 1000;
  await profiler?.stop(calls);
  latencies.sort((a, b) => a - b);
  const pick = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  gc?.();
  const mem = process.memoryUsage();
  const toggled = await toggledRpcTelemetry(run);
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
    mainCpuUsPerCall: mainNs / 1000 / Math.max(1, calls),
    toggled,
  };
  closeMeshClients();
  await server.close(1_000);
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(0);
}

/**
 * PROFILE_DIR=dir: a V8 CPU profile of the measured window only (no start-up, no warm-up),
 * written to dir/<mode>-<pid>.cpuprofile, with the call count in the file name's sidecar
 * (<same>.calls), so self time per call can be read off it.
 */
async function startWindowProfile(): Promise<{ stop(calls: number): Promise<void> } | undefined> {
  const dir = process.env.PROFILE_DIR;
  if (!dir) return undefined;
  const { Session } = await import("node:inspector/promises");
  const { mkdirSync, writeFileSync } = await import("node:fs");
  const session = new Session();
  session.connect();
  // PROFILE_HEAP=1: allocations instead of CPU (V8's sampling heap profiler, which scales
  // its samples to bytes allocated, collected objects included): what GC will have to do.
  const heap = process.env.PROFILE_HEAP === "1";
  if (heap) {
    await session.post("HeapProfiler.enable");
    await session.post("HeapProfiler.startSampling", {
      samplingInterval: 256,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
  } else {
    await session.post("Profiler.enable");
    await session.post("Profiler.setSamplingInterval", { interval: 200 });
    await session.post("Profiler.start");
  }
  return {
    async stop(calls) {
      const { profile } = heap ? await session.post("HeapProfiler.stopSampling") : await session.post("Profiler.stop");
      mkdirSync(dir, { recursive: true });
      const base = `${dir}/${process.env.PROTOMESH_TELEMETRY ?? "on"}-${process.pid}`;
      writeFileSync(`${base}.${heap ? "heapprofile" : "cpuprofile"}`, JSON.stringify(profile));
      writeFileSync(`${base}.calls`, String(calls));
      session.disconnect();
    },
  };
}

/**
 * See WorkerResult.toggled: TOGGLE_SLICES slices (default 40) of 250 ms, the two kinds
 * alternating. Many short slices: a noisy host slows both kinds alike.
 */
const TOGGLE_SLICES = Number(process.env.TOGGLE_SLICES ?? 40);
async function toggledRpcTelemetry(
  run: (ms: number) => Promise<{ calls: number }>,
): Promise<WorkerResult["toggled"]> {
  const { rpcTelemetry, installRpcTelemetry } = await import("../mesh/telemetry/rpc-hooks.js");
  const installed = rpcTelemetry();
  if (!installed || process.env.TOGGLE === "0") return undefined;
  const sum = { with: { ns: 0, calls: 0 }, without: { ns: 0, calls: 0 } };
  const pairRatios: number[] = [];
  let withSlice = 0;
  for (let i = 0; i < TOGGLE_SLICES; i++) {
    const on = i % 2 === 0;
    installRpcTelemetry(on ? installed : undefined);
    const before = await mainThreadCpuNs();
    // run() waits for the calls in flight: a slice holds only calls of its kind.
    const { calls } = await run(250);
    const ns = (await mainThreadCpuNs()) - before;
    const acc = on ? sum.with : sum.without;
    acc.ns += ns;
    acc.calls += calls;
    // A pair is a slice with and the next one without: the median of their ratios shrugs
    // off a slice the host happened to slow down.
    if (on) withSlice = ns / Math.max(1, calls);
    else pairRatios.push(withSlice / (ns / Math.max(1, calls)));
  }
  installRpcTelemetry(installed);
  return {
    withUs: sum.with.ns / 1000 / sum.with.calls,
    withoutUs: sum.without.ns / 1000 / sum.without.calls,
    ratio: median(pairRatios),
  };
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

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

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

  const modes = (process.env.MODES ?? "off,on,on+otlp").split(",").map((m) => m.trim()) as Mode[];
  if (modes[0] !== "off" || modes.some((m) => !["off", "on", "on+otlp"].includes(m))) {
    throw new Error(`MODES must start with off and name off, on, on+otlp: ${process.env.MODES}`);
  }
  const results: Record<Mode, WorkerResult[]> = { off: [], on: [], "on+otlp": [] };
  console.log(
    `unary CatalogService.GetProduct over mesh/server + mesh/client (HOP=${HOP}), ${CONCURRENCY} in flight, ${ROUNDS} rounds x ${SECONDS} s per mode, modes ${PARALLEL ? "side by side" : "one after another"}`,
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
        `round ${round} ${mode.padEnd(8)} ${(r.calls / r.seconds).toFixed(0).padStart(6)} calls/s  ${r.cpuUsPerCall.toFixed(0).padStart(5)} µs CPU/call (main thread ${r.mainCpuUsPerCall.toFixed(0)})  p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms  rss ${r.rssMb.toFixed(1)} MB  heap ${r.heapUsedMb.toFixed(1)} MB  errors ${r.errors}`,
      );
    }
  }
  sink.close();

  // Ratios within a round (the modes of one round ran back to back or side by side), then
  // the median over rounds: a busy machine moves both sides of a ratio alike.
  const ratio = (mode: Mode, pick: (r: WorkerResult) => number) =>
    median(results[mode].map((r, i) => pick(r) / pick(results.off[i]!)));
  const rps = (r: WorkerResult) => r.calls / r.seconds;
  const summary = modes.map((mode) => {
    const rs = results[mode];
    return {
      mode,
      rps: median(rs.map(rps)),
      rpsRatio: ratio(mode, rps),
      cpu: median(rs.map((r) => r.cpuUsPerCall)),
      cpuRatio: ratio(mode, (r) => r.cpuUsPerCall),
      mainCpu: median(rs.map((r) => r.mainCpuUsPerCall)),
      mainCpuRatio: ratio(mode, (r) => r.mainCpuUsPerCall),
      p50: median(rs.map((r) => r.p50Ms)),
      p99: median(rs.map((r) => r.p99Ms)),
      rssBefore: median(rs.map((r) => r.rssBeforeMb)),
      rss: median(rs.map((r) => r.rssMb)),
      heap: median(rs.map((r) => r.heapUsedMb)),
    };
  });
  const off = summary[0]!;
  const cell = (v: string) => v.padStart(10);
  const row = (label: string, f: (s: (typeof summary)[number]) => string) =>
    console.log(label.padEnd(34) + summary.map((s) => cell(f(s))).join(""));
  const pct = (r: number) => `${r >= 1 ? "+" : ""}${((r - 1) * 100).toFixed(1)}%`;
  console.log(`\nmedians over ${ROUNDS} rounds`.padEnd(35) + summary.map((s) => cell(s.mode)).join(""));
  row("calls/s", (s) => s.rps.toFixed(0));
  row("calls/s vs off (ratio per round)", (s) => (s === off ? "" : `${s.rpsRatio.toFixed(3)}`));
  row("CPU µs per call (both sides)", (s) => s.cpu.toFixed(0));
  row("CPU per call vs off", (s) => (s === off ? "" : pct(s.cpuRatio)));
  row("main-thread CPU µs per call", (s) => s.mainCpu.toFixed(0));
  row("main-thread CPU per call vs off", (s) => (s === off ? "" : pct(s.mainCpuRatio)));
  row("p50 / p99 ms", (s) => `${s.p50.toFixed(1)}/${s.p99.toFixed(1)}`);
  row("same process, RPC telemetry toggled", (s) => {
    const ts = results[s.mode].map((r) => r.toggled).filter((x) => x !== undefined);
    if (ts.length === 0) return "";
    return `+${median(ts.map((x) => x.withUs - x.withoutUs)).toFixed(1)} µs`;
  });
  row("RSS after start + gc, MB", (s) => s.rssBefore.toFixed(1));
  row("RSS at end, MB", (s) => s.rss.toFixed(1));
  row("heap used at end after gc, MB", (s) => s.heap.toFixed(1));
  for (const s of summary.slice(1)) {
    const slower = (1 - s.rpsRatio) * 100;
    console.log(
      `telemetry ${s.mode}: ${slower.toFixed(1)} % fewer calls/s (goal ≤ 10 %: ${slower <= 10 ? "met" : "not met"}), ` +
        `CPU per call ${off.cpu.toFixed(0)} -> ${s.cpu.toFixed(0)} µs (${pct(s.cpuRatio)}; main thread ${off.mainCpu.toFixed(0)} -> ${s.mainCpu.toFixed(0)} µs, ${pct(s.mainCpuRatio)}), ` +
        `memory added: +${(s.rssBefore - off.rssBefore).toFixed(1)} MB RSS at start, +${(s.rss - off.rss).toFixed(1)} MB RSS at end, +${(s.heap - off.heap).toFixed(1)} MB heap`,
    );
  }
  for (const s of summary.slice(1)) {
    const ts = results[s.mode].map((r) => r.toggled).filter((x) => x !== undefined);
    if (ts.length === 0) continue;
    const withUs = median(ts.map((x) => x.withUs));
    const withoutUs = median(ts.map((x) => x.withoutUs));
    console.log(
      `telemetry ${s.mode}, one process, RPC telemetry installed/removed every 250 ms: main-thread CPU ${withoutUs.toFixed(0)} -> ${withUs.toFixed(0)} µs per call ` +
        `(+${median(ts.map((x) => x.withUs - x.withoutUs)).toFixed(1)} µs; median ratio of adjacent slices ${pct(median(ts.map((x) => x.ratio)))}); the rest of the on/off gap is what the process pays either way`,
    );
  }
  console.log(`OTLP sink received ${exportRequests} export requests, ${(exportedBytes / 2 ** 20).toFixed(1)} MB`);
}

if (process.env.BENCH_ROLE === "worker") await worker();
else await main();
