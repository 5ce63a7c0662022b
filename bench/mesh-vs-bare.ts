/**
 * Unary GetProduct calls per second through mesh/server against the same
 * handler on a bare grpc-js server, in one run on one machine.
 *
 *   npx tsx bench/mesh-vs-bare.ts [--seconds 3] [--connections 8] [--streams 16] [--rounds 5]
 *
 * The load comes from h2load (nghttp2-client) when it is installed, so the
 * load generator costs the Node process nothing; otherwise from concurrent
 * grpc-js clients in this process. Both servers use the same handler and the
 * same protobuf-es (de)serialization, so the difference is what the mesh adds:
 * the Connect handler context, interceptor chain, AsyncLocalStorage call
 * context, metadata conversion. A third server, bare with an
 * AsyncLocalStorage scope per call, shows what part of the difference is the
 * price of AsyncLocalStorage on Node 20 (which a service running OpenTelemetry
 * pays anyway). Each server runs in its own process; rounds
 * alternate between them and the median of each is reported: calls/s, the
 * server's CPU time per call (steady even on a busy machine, where calls/s
 * swings) and the peak RSS of each server process.
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { cpus, loadavg } from "node:os";
import { createInterface } from "node:readline";
import { AsyncLocalStorage } from "node:async_hooks";
import { fileURLToPath } from "node:url";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { create, toBinary } from "@bufbuild/protobuf";
import type { MessageShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  CatalogService,
  GetProductRequestSchema,
  GetProductResponseSchema,
  ProductSchema,
} from "../gen/shop/catalog/v1/catalog_pb.js";
import { createMeshTransport } from "../mesh/client.js";
import { createClient } from "@connectrpc/connect";
import { methodDefinition } from "../mesh/grpc-codec.js";
import { serve, startMeshServer } from "../mesh/server.js";

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i].replace(/^--/, ""), process.argv[i + 1]);
const seconds = Number(args.get("seconds") ?? 3);
const connections = Number(args.get("connections") ?? 8);
const streams = Number(args.get("streams") ?? 16);
const rounds = Number(args.get("rounds") ?? 5);

// The handler both servers run: an in-memory product, as a catalog hit would return.
const stored = create(ProductSchema, {
  id: "0b6f3a52-7d1c-4a53-9e1e-4f7f8f3b2a10",
  sku: "BOOK-0001",
  name: "The Pragmatic Programmer",
  description: "From journeyman to master.",
  category: "books",
  price: { currencyCode: "EUR", amountMinor: 3999n },
  tags: ["software", "classic"],
  imageUrl: "https://example.com/p.jpg",
  createTime: timestampFromMs(1_700_000_000_000),
});
function getProduct(req: MessageShape<typeof GetProductRequestSchema>) {
  return { product: { ...stored, id: req.id || stored.id } };
}

/**
 * The bare server. With `withContext`, each call runs inside an
 * AsyncLocalStorage scope, as OpenTelemetry's context manager (or any request
 * context) does: on Node 20 that turns on async hooks for the whole process.
 */
async function startBare(withContext: boolean): Promise<{ port: number; close: () => void }> {
  const server = new grpc.Server();
  const def = methodDefinition(CatalogService.method.getProduct);
  const storage = new AsyncLocalStorage<object>();
  type Call = grpc.ServerUnaryCall<MessageShape<typeof GetProductRequestSchema>, unknown>;
  const handle = (call: Call, cb: grpc.sendUnaryData<unknown>) =>
    cb(null, create(GetProductResponseSchema, getProduct(call.request)));
  server.addService({ getProduct: def }, {
    getProduct: withContext
      ? (call: Call, cb: grpc.sendUnaryData<unknown>) => storage.run({ call }, handle, call, cb)
      : handle,
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  return { port, close: () => server.forceShutdown() };
}

function hasH2load(): boolean {
  try {
    execFileSync("h2load", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

const bodyFile = (() => {
  const msg = toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { id: "p-1" }));
  const frame = Buffer.alloc(5 + msg.byteLength);
  frame.writeUInt8(0, 0);
  frame.writeUInt32BE(msg.byteLength, 1);
  Buffer.from(msg).copy(frame, 5);
  const dir = mkdtempSync(join(tmpdir(), "mesh-bench-"));
  const file = join(dir, "get-product.bin");
  writeFileSync(file, frame);
  return file;
})();

/** What one round of load did: calls answered and wall-clock calls/s. */
interface Round {
  calls: number;
  callsPerSecond: number;
}

async function loadWithH2load(port: number): Promise<Round> {
  const { stdout } = await promisify(execFile)("h2load", [
    "-D", String(seconds),
    "-c", String(connections),
    "-m", String(streams),
    "-t", "1",
    "-d", bodyFile,
    "-H", "content-type: application/grpc",
    "-H", "te: trailers",
    `http://127.0.0.1:${port}/shop.catalog.v1.CatalogService/GetProduct`,
  ]);
  const rps = /finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(stdout);
  const ok = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed/.exec(stdout);
  if (!rps || !ok || Number(ok[2]) > 0) throw new Error(`h2load run failed:\n${stdout}`);
  return { calls: Number(ok[1]), callsPerSecond: Number(rps[1]) };
}

async function loadWithGrpcJs(port: number): Promise<Round> {
  const transport = createMeshTransport({ target: `127.0.0.1:${port}` });
  const client = createClient(CatalogService, transport);
  let count = 0;
  const start = Date.now();
  const end = start + seconds * 1000;
  await Promise.all(
    Array.from({ length: connections * streams }, async () => {
      while (Date.now() < end) {
        await client.getProduct({ id: "p-1" });
        count++;
      }
    }),
  );
  transport.close();
  return { calls: count, callsPerSecond: (count * 1000) / (Date.now() - start) };
}

async function check(port: number): Promise<void> {
  // Both servers must answer correctly before their speed means anything.
  const transport = createMeshTransport({ target: `127.0.0.1:${port}` });
  const res = await createClient(CatalogService, transport).getProduct({ id: "p-1" });
  transport.close();
  if (res.product?.sku !== "BOOK-0001" || res.product.id !== "p-1") throw new Error("wrong answer");
}

/**
 * Child process: serve one kind and print the port; answer "cpu" on stdin with
 * the CPU time used so far, and report peak RSS on SIGTERM.
 */
async function serveOnly(kind: string): Promise<void> {
  let close: () => unknown;
  let port: number;
  if (kind === "bare" || kind === "bare-als") {
    const bare = await startBare(kind === "bare-als");
    ({ port, close } = bare);
  } else {
    const mesh = await startMeshServer({
      name: "bench",
      host: "127.0.0.1",
      port: 0,
      services: [serve(CatalogService, { getProduct: (req) => getProduct(req) })],
    });
    port = mesh.port;
    close = () => mesh.close(100);
  }
  const say = (line: object) => process.stdout.write(JSON.stringify(line) + "\n");
  createInterface({ input: process.stdin }).on("line", () => {
    const { user, system } = process.cpuUsage();
    say({ cpuMicros: user + system });
  });
  process.on("SIGTERM", async () => {
    await close();
    say({ maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) });
    process.exit(0);
  });
  say({ port });
}

interface Child {
  port: number;
  cpuMicros(): Promise<number>;
  stop(): Promise<number>;
}

function spawnServer(kind: string): Promise<Child> {
  const child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url), "--serve", kind], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const next = () => new Promise<Record<string, number>>((resolve) => lines.once("line", (l) => resolve(JSON.parse(l))));
  return next().then(({ port }) => ({
    port,
    cpuMicros: async () => {
      const answer = next();
      child.stdin!.write("cpu\n");
      return (await answer).cpuMicros;
    },
    stop: async () => {
      const last = next();
      child.kill("SIGTERM");
      return (await last).maxRssMiB;
    },
  }));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

if (args.has("serve")) {
  await serveOnly(args.get("serve")!);
} else {
  // Each server in its own process, so neither pays for the other's
  // AsyncLocalStorage hooks, garbage or JIT state.
  const kinds = ["bare", "bare-als", "mesh"] as const;
  type Kind = (typeof kinds)[number];
  const servers = {} as Record<Kind, Child>;
  for (const kind of kinds) servers[kind] = await spawnServer(kind);
  for (const kind of kinds) await check(servers[kind].port);

  const tool = hasH2load() ? "h2load" : "grpc-js clients (in process)";
  const load = hasH2load() ? loadWithH2load : loadWithGrpcJs;
  console.log(
    `GetProduct, unary: ${tool}, ${connections} connections x ${streams} streams, ${seconds} s per round, ${rounds} rounds rotating (after one warm-up round each)`,
  );
  // Calls/s swing with whatever else the machine runs; the server's CPU time
  // per call swings less, so both are reported.
  const runs = { bare: [], "bare-als": [], mesh: [] } as Record<Kind, number[]>;
  const cpuPerCall = { bare: [], "bare-als": [], mesh: [] } as Record<Kind, number[]>;
  for (let r = 0; r <= rounds; r++) {
    // Rotate which goes first, so a drift in machine load hits all alike.
    const order = kinds.map((_, i) => kinds[(i + r) % kinds.length]);
    for (const kind of order) {
      const before = await servers[kind].cpuMicros();
      const round = await load(servers[kind].port);
      const used = (await servers[kind].cpuMicros()) - before;
      if (r === 0) continue; // warm-up: JIT, connection setup
      runs[kind].push(round.callsPerSecond);
      cpuPerCall[kind].push(used / round.calls);
    }
    if (r > 0) {
      console.log(
        `  round ${r}: ` +
          kinds
            .map((k) => `${k} ${runs[k].at(-1)!.toFixed(0)} calls/s (${cpuPerCall[k].at(-1)!.toFixed(1)} µs CPU/call)`)
            .join(", "),
      );
    }
  }
  const rps = {} as Record<Kind, number>;
  const cpu = {} as Record<Kind, number>;
  for (const k of kinds) {
    rps[k] = median(runs[k]);
    cpu[k] = median(cpuPerCall[k]);
  }
  const rss = {} as Record<Kind, number>;
  for (const k of kinds) rss[k] = await servers[k].stop();
  const label: Record<Kind, string> = {
    bare: "bare grpc-js server:            ",
    "bare-als": "bare + AsyncLocalStorage scope: ",
    mesh: "mesh server:                    ",
  };
  console.log("medians (best round in brackets):");
  for (const k of kinds) {
    console.log(
      `  ${label[k]}${rps[k].toFixed(0)} [${Math.max(...runs[k]).toFixed(0)}] calls/s, ` +
        `${cpu[k].toFixed(1)} [${Math.min(...cpuPerCall[k]).toFixed(1)}] µs CPU per call, peak RSS ${rss[k]} MiB`,
    );
  }
  console.log(`mesh / bare:                    ${(rps.mesh / rps.bare).toFixed(2)} in calls/s, ${(cpu.bare / cpu.mesh).toFixed(2)} in calls per CPU second`);
  console.log(`mesh / bare + ALS:              ${(rps.mesh / rps["bare-als"]).toFixed(2)} in calls/s, ${(cpu["bare-als"] / cpu.mesh).toFixed(2)} in calls per CPU second`);
  console.log(`node ${process.version}, ${cpus().length} CPUs, load average ${loadavg()[0].toFixed(1)}`);
}
