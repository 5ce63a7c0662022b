/**
 * Gateway throughput and added latency with h2load, all against the same
 * upstream (the test-only echo service on mesh/server, grpc-js) in one run:
 *
 *   direct      h2load -> upstream (gRPC)                      baseline
 *   nginx       h2load -> nginx grpc_pass -> upstream (gRPC)   reference proxy
 *   gw-grpc     h2load -> gateway (gRPC fast path) -> upstream
 *   gw-rest     h2load -> gateway (REST GET /v1/echo/{id}) -> upstream
 *   gw-connect  h2load -> gateway (Connect JSON POST) -> upstream
 *   bare        h2load -> a bare node:http2 frame proxy (bench/bare-h2-proxy.ts,
 *               no policies) -> upstream: the floor for a Node HTTP/2 hop
 *   base-grpc, base-rest   with BASE=<checkout>: the gateway of another checkout
 *               (e.g. a git worktree of the commit before a change), interleaved
 *               with this one in the same run (before/after)
 *   gw-grpc+otel, gw-rest+otel   the same through a second gateway started as
 *               scripts/stack.ts starts it (--import mesh/telemetry/register.ts);
 *               deploy/gateway.yaml starts it without. nginx traces nothing, so
 *               the goal compares gw-grpc; the +otel rows show what tracing costs.
 *
 * Fairness: one upstream for all; the same process count per proxy (WORKERS);
 * besides each proxy's CPU per request, the upstream's and h2load's CPU per
 * request are printed, so a saturated upstream (every proxy then looks alike)
 * or a starved load generator shows.
 *
 * Throughput: -c CONNS -m STREAMS for DURATION seconds after a warm-up.
 * Added latency: one client at RPS requests/s (moderate load), per-request
 * times from h2load --log-file, interleaved over ROUNDS (median round by p99);
 * p50/p99 minus the direct p50/p99.
 *
 * Needs h2load (apt-get install nghttp2-client) and nginx (apt-get install nginx).
 * Run: npx tsx bench/gateway-h2load.ts   (env: DURATION=10 CONNS=8 STREAMS=16 RPS=500 ROUNDS=3 OTEL=1 (0: no traced gateway)
 *      WORKERS=1: processes for nginx (worker_processes) and the gateway (GATEWAY_WORKERS) alike;
 *      BASE=/tmp/base: also a gateway from that checkout; GATEWAY_NODE_FLAGS="--max-semi-space-size=32": node flags for the gateways)
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { create, toBinary } from "@bufbuild/protobuf";
import { EchoRequestSchema } from "../gen/protomesh/testing/v1/echo_pb.js";
import { freePort } from "../mesh/net.js";

const run = promisify(execFile);
const root = fileURLToPath(new URL("..", import.meta.url));
const DURATION = Number(process.env.DURATION ?? 10);
const CONNS = Number(process.env.CONNS ?? 8);
const STREAMS = Number(process.env.STREAMS ?? 16);
const RPS = Number(process.env.RPS ?? 500);
const LATENCY_SECONDS = Number(process.env.LATENCY_SECONDS ?? 6);
// Targets run interleaved, ROUNDS times, and the median is reported, so a
// busy machine skews every target alike rather than whichever ran last.
const ROUNDS = Number(process.env.ROUNDS ?? 3);
// Processes on each proxy (the same number for a fair comparison).
const WORKERS = Number(process.env.WORKERS ?? 1);
const work = mkdtempSync(join(tmpdir(), "gw-bench-"));
const children: ChildProcess[] = [];


async function startNode(
  script: string,
  env: Record<string, string>,
  readyUrl?: string,
  imports: string[] = [],
  flags: string[] = [],
  from = root,
): Promise<ChildProcess> {
  const child = spawn(process.execPath, [...flags, "--import", "tsx", ...imports.flatMap((i) => ["--import", i]), join(from, script)], {
    cwd: from,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  if (readyUrl) {
    for (let i = 0; i < 200; i++) {
      if (await fetch(readyUrl).then((r) => r.ok, () => false)) return child;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${script} not ready`);
  }
  await new Promise<void>((resolve) => child.stdout!.on("data", (d: Buffer) => d.toString().includes("listening") && resolve()));
  return child;
}

async function startNginx(port: number, upstream: number): Promise<ChildProcess> {
  const conf = join(work, "nginx.conf");
  writeFileSync(
    conf,
    `worker_processes ${WORKERS};
daemon off;
pid ${work}/nginx.pid;
error_log ${work}/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${work}/body; proxy_temp_path ${work}/proxy; fastcgi_temp_path ${work}/fcgi;
  uwsgi_temp_path ${work}/uwsgi; scgi_temp_path ${work}/scgi;
  # Long-lived connections both ways (the defaults close them every 1000 requests).
  keepalive_requests 1000000;
  upstream echo { server 127.0.0.1:${upstream}; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${port} http2;
    http2_max_concurrent_streams 256;
    location / { grpc_pass grpc://echo; }
  }
}
`,
  );
  const child = spawn("nginx", ["-c", conf, "-p", work], { stdio: ["ignore", "inherit", "inherit"] });
  children.push(child);
  await new Promise((r) => setTimeout(r, 500));
  return child;
}

/** CPU seconds (user + system) used so far by a process and its children (nginx workers). */
function cpuSeconds(pid: number): number {
  const ids = [pid];
  try {
    for (const line of readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/)) if (line) ids.push(Number(line));
  } catch {
    /* no children */
  }
  let ticks = 0;
  for (const id of ids) {
    try {
      const f = readFileSync(`/proc/${id}/stat`, "utf8").split(") ")[1].split(" ");
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
    } catch {
      /* exited */
    }
  }
  return ticks / 100; // USER_HZ
}

/** CPU seconds used so far by this process's exited children (every h2load run). */
function childrenCpuSeconds(): number {
  const f = readFileSync("/proc/self/stat", "utf8").split(") ")[1].split(" ");
  return (Number(f[13]) + Number(f[14])) / 100; // cutime, cstime (fields 16 and 17)
}

interface H2loadResult {
  rps: number;
  succeeded: number;
  failed: number;
  non2xx: number;
}

async function h2load(url: string, args: string[]): Promise<H2loadResult> {
  const { stdout } = await run("h2load", [...args, url], { maxBuffer: 1 << 24 });
  const rps = Number(/finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(stdout)?.[1] ?? NaN);
  const m = /requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(stdout);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(stdout);
  return {
    rps,
    succeeded: Number(m?.[2] ?? 0),
    failed: Number(m?.[3] ?? 0) + Number(m?.[4] ?? 0),
    non2xx: codes ? Number(codes[2]) + Number(codes[3]) + Number(codes[4]) : 0,
  };
}

interface Target {
  name: string;
  url: string;
  args: string[];
  /** The process whose CPU the request costs (the proxy; the upstream for "direct"). */
  pid: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function latency(t: Target): Promise<{ p50: number; p99: number; n: number }> {
  const log = join(work, `${t.name}.log`);
  await run("h2load", [...t.args, "-c", "1", "-m", "1", `--rps=${RPS}`, `-D`, String(LATENCY_SECONDS), `--log-file=${log}`, t.url], {
    maxBuffer: 1 << 24,
  });
  // Each line: start time (µs since epoch), status, duration (µs).
  const us = readFileSync(log, "utf8")
    .trim()
    .split("\n")
    .map((l) => Number(l.split("\t")[2]))
    .filter((n) => Number.isFinite(n))
    .sort((a, b) => a - b);
  return { p50: percentile(us, 50) / 1000, p99: percentile(us, 99) / 1000, n: us.length };
}

async function main() {
  const [upPort, gwPort, otelPort, nginxPort, barePort, basePort] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  const upstream = await startNode("gateway/testing/echo-main.ts", { PORT: String(upPort) });
  const gatewayFlags = (process.env.GATEWAY_NODE_FLAGS ?? "").split(" ").filter(Boolean);
  const startGateway = (port: number, imports: string[], from = root) =>
    startNode(
      "gateway/main.ts",
      {
        PORT: String(port),
        GATEWAY_EXPOSE_TESTING: "1",
        UPSTREAMS: `echo=127.0.0.1:${upPort}`,
        LOG_LEVEL: "error",
        GATEWAY_WORKERS: String(WORKERS),
        METRICS_PORT: "off",
      },
      // /healthz: /readyz also probes the shop upstreams (not running here).
      `http://127.0.0.1:${port}/healthz`,
      imports,
      gatewayFlags,
      from,
    );
  const gateway = await startGateway(gwPort, []);
  // OTEL=0 skips the traced gateway; one that does not start is reported and skipped.
  const gatewayOtel =
    process.env.OTEL === "0"
      ? undefined
      : await startGateway(otelPort, [join(root, "mesh/telemetry/register.ts")]).catch((e: Error) => {
          console.warn(`gateway with telemetry not started (${e.message}): its rows are skipped`);
          return undefined;
        });
  const nginx = await startNginx(nginxPort, upPort);
  const bare = await startNode("bench/bare-h2-proxy.ts", { PORT: String(barePort), UPSTREAM: `127.0.0.1:${upPort}` });
  const base = process.env.BASE ? await startGateway(basePort, [], process.env.BASE) : undefined;

  const body = toBinary(EchoRequestSchema, create(EchoRequestSchema, { id: "bench", count: 1 }));
  const framed = Buffer.alloc(5 + body.length);
  framed.writeUInt32BE(body.length, 1);
  Buffer.from(body).copy(framed, 5);
  const grpcFile = join(work, "echo.bin");
  writeFileSync(grpcFile, framed);
  const jsonFile = join(work, "echo.json");
  writeFileSync(jsonFile, JSON.stringify({ id: "bench", count: 1 }));

  const grpcArgs = ["-d", grpcFile, "-H", "content-type: application/grpc", "-H", "te: trailers"];
  const targets: Target[] = [
    { name: "direct", url: `http://127.0.0.1:${upPort}/protomesh.testing.v1.EchoService/Echo`, args: grpcArgs, pid: upstream.pid! },
    { name: "nginx", url: `http://127.0.0.1:${nginxPort}/protomesh.testing.v1.EchoService/Echo`, args: grpcArgs, pid: nginx.pid! },
    { name: "bare", url: `http://127.0.0.1:${barePort}/protomesh.testing.v1.EchoService/Echo`, args: grpcArgs, pid: bare.pid! },
    { name: "gw-grpc", url: `http://127.0.0.1:${gwPort}/protomesh.testing.v1.EchoService/Echo`, args: grpcArgs, pid: gateway.pid! },
    { name: "gw-rest", url: `http://127.0.0.1:${gwPort}/v1/echo/bench?count=1`, args: [], pid: gateway.pid! },
    {
      name: "gw-connect",
      url: `http://127.0.0.1:${gwPort}/protomesh.testing.v1.EchoService/Echo`,
      args: ["-d", jsonFile, "-H", "content-type: application/json"],
      pid: gateway.pid!,
    },
  ];
  if (base) {
    targets.push(
      { name: "base-grpc", url: `http://127.0.0.1:${basePort}/protomesh.testing.v1.EchoService/Echo`, args: grpcArgs, pid: base.pid! },
      { name: "base-rest", url: `http://127.0.0.1:${basePort}/v1/echo/bench?count=1`, args: [], pid: base.pid! },
    );
  }
  if (gatewayOtel) {
    targets.push(
      { name: "gw-grpc+otel", url: `http://127.0.0.1:${otelPort}/protomesh.testing.v1.EchoService/Echo`, args: grpcArgs, pid: gatewayOtel.pid! },
      { name: "gw-rest+otel", url: `http://127.0.0.1:${otelPort}/v1/echo/bench?count=1`, args: [], pid: gatewayOtel.pid! },
    );
  }

  // CPU per request of the proxying process: robust on a busy machine, where
  // req/s mostly measures how much CPU the scheduler handed out.
  const cpuUs: Record<string, number[]> = {};
  const upUs: Record<string, number[]> = {};
  const loadUs: Record<string, number[]> = {};
  const samples: Record<string, H2loadResult[]> = {};
  for (const t of targets) await h2load(t.url, [...t.args, "-c", String(CONNS), "-m", String(STREAMS), "-D", "2"]); // warm-up
  for (let round = 0; round < ROUNDS; round++) {
    for (const t of targets) {
      const before = cpuSeconds(t.pid);
      const upBefore = cpuSeconds(upstream.pid!);
      const loadBefore = childrenCpuSeconds();
      const r = await h2load(t.url, [...t.args, "-c", String(CONNS), "-m", String(STREAMS), "-D", String(DURATION)]);
      const n = Math.max(1, r.succeeded);
      (cpuUs[t.name] ??= []).push(((cpuSeconds(t.pid) - before) * 1e6) / n);
      (upUs[t.name] ??= []).push(((cpuSeconds(upstream.pid!) - upBefore) * 1e6) / n);
      (loadUs[t.name] ??= []).push(((childrenCpuSeconds() - loadBefore) * 1e6) / n);
      (samples[t.name] ??= []).push(r);
    }
  }
  const results: Record<string, H2loadResult> = {};
  const cpuMedian: Record<string, number> = {};
  for (const t of targets) {
    const sorted = [...samples[t.name]].sort((a, b) => a.rps - b.rps);
    const r = (results[t.name] = sorted[Math.floor(sorted.length / 2)]);
    const all = samples[t.name].map((x) => x.rps.toFixed(0)).join("/");
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const cpu = median(cpuUs[t.name]);
    cpuMedian[t.name] = cpu;
    console.log(
      `${t.name.padEnd(12)} ${r.rps.toFixed(0).padStart(7)} req/s median of ${all}  cpu ${cpu.toFixed(0)} us/req` +
        `  (upstream ${median(upUs[t.name]).toFixed(0)}, h2load ${median(loadUs[t.name]).toFixed(0)} us/req; ok ${r.succeeded}, failed ${r.failed}, non-2xx ${r.non2xx})`,
    );
  }
  // Latency runs are interleaved over the rounds too; the median round (by p99) is reported.
  const latRuns: Record<string, Array<{ p50: number; p99: number; n: number }>> = {};
  for (let round = 0; round < ROUNDS; round++) for (const t of targets) (latRuns[t.name] ??= []).push(await latency(t));
  const lat: Record<string, { p50: number; p99: number; n: number }> = {};
  for (const t of targets) {
    const runs = [...latRuns[t.name]].sort((a, b) => a.p99 - b.p99);
    lat[t.name] = runs[Math.floor(runs.length / 2)];
    const all = latRuns[t.name].map((r) => `${r.p50.toFixed(2)}/${r.p99.toFixed(2)}`).join(" ");
    console.log(`${t.name.padEnd(12)} at ${RPS} req/s: p50 ${lat[t.name].p50.toFixed(3)} ms  p99 ${lat[t.name].p99.toFixed(3)} ms  (n=${lat[t.name].n}; p50/p99 per round ${all})`);
  }
  const ratio = (a: string, b: string) => (results[a].rps / results[b].rps).toFixed(2);
  console.log("");
  console.log(`gateway gRPC / nginx grpc_pass : ${ratio("gw-grpc", "nginx")}x   (goal >= 1.0)`);
  console.log(`gateway REST / gateway gRPC    : ${ratio("gw-rest", "gw-grpc")}x   (goal >= 0.8)`);
  console.log(`gateway Connect / gateway gRPC : ${ratio("gw-connect", "gw-grpc")}x`);
  console.log(`gateway gRPC / bare Node proxy: ${ratio("gw-grpc", "bare")}x`);
  if (base) console.log(`this checkout / BASE          : gRPC ${ratio("gw-grpc", "base-grpc")}x, REST ${ratio("gw-rest", "base-rest")}x`);
  if (gatewayOtel) console.log(`with telemetry: gRPC / nginx ${ratio("gw-grpc+otel", "nginx")}x, REST / gRPC ${ratio("gw-rest+otel", "gw-grpc+otel")}x`);
  const cpuRatio = (a: string, b: string) => (cpuMedian[b] / cpuMedian[a]).toFixed(2);
  console.log(`by CPU per request (capacity ratio, b/a): gw-grpc vs nginx ${cpuRatio("gw-grpc", "nginx")}x, gw-rest vs gw-grpc ${cpuRatio("gw-rest", "gw-grpc")}x`);
  if (base) console.log(`CPU per request, this checkout / BASE: gRPC ${(cpuMedian["gw-grpc"] / cpuMedian["base-grpc"]).toFixed(2)}x, REST ${(cpuMedian["gw-rest"] / cpuMedian["base-rest"]).toFixed(2)}x`);
  for (const n of targets.map((t) => t.name).filter((n) => n !== "direct")) {
    console.log(
      `added latency ${n.padEnd(12)}: p50 ${(lat[n].p50 - lat.direct.p50).toFixed(3)} ms, p99 ${(lat[n].p99 - lat.direct.p99).toFixed(3)} ms   (goal p99 < 1 ms)`,
    );
  }
  console.log(
    `\nsettings: ${CONNS} connections x ${STREAMS} streams, ${DURATION} s per target x ${ROUNDS} rounds (interleaved); latency at ${RPS} req/s, 1 connection; ${WORKERS} worker(s) per proxy; load average ${loadavg().map((l) => l.toFixed(1)).join(" ")}`,
  );
}

try {
  await main();
} finally {
  for (const c of children) c.kill("SIGTERM");
}
