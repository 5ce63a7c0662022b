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
 * context, metadata conversion. Each server runs in its own process; rounds
 * alternate between them and the median of each is reported, with the peak
 * RSS of each server process.
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { cpus, loadavg } from "node:os";
import { createInterface } from "node:readline";
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

async function startBare(): Promise<{ port: number; close: () => void }> {
  const server = new grpc.Server();
  const def = methodDefinition(CatalogService.method.getProduct);
  server.addService({ getProduct: def }, {
    getProduct: (call: grpc.ServerUnaryCall<MessageShape<typeof GetProductRequestSchema>, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      cb(null, create(GetProductResponseSchema, getProduct(call.request)));
    },
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

async function loadWithH2load(port: number): Promise<number> {
  const { stdout } = await promisify(execFile)("h2load", [
    "-D", String(seconds),
    "--warm-up-time", "1",
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
  return Number(rps[1]);
}

async function loadWithGrpcJs(port: number): Promise<number> {
  const transport = createMeshTransport({ target: `127.0.0.1:${port}` });
  const client = createClient(CatalogService, transport);
  let count = 0;
  const end = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: connections * streams }, async () => {
      while (Date.now() < end) {
        await client.getProduct({ id: "p-1" });
        count++;
      }
    }),
  );
  transport.close();
  return count / seconds;
}

async function check(port: number): Promise<void> {
  // Both servers must answer correctly before their speed means anything.
  const transport = createMeshTransport({ target: `127.0.0.1:${port}` });
  const res = await createClient(CatalogService, transport).getProduct({ id: "p-1" });
  transport.close();
  if (res.product?.sku !== "BOOK-0001" || res.product.id !== "p-1") throw new Error("wrong answer");
}

/** Child process: serve one kind, print the port, report peak RSS on SIGTERM. */
async function serveOnly(kind: string): Promise<void> {
  let close: () => unknown;
  let port: number;
  if (kind === "bare") {
    const bare = await startBare();
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
  process.on("SIGTERM", async () => {
    await close();
    process.stdout.write(JSON.stringify({ maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) }) + "\n");
    process.exit(0);
  });
  process.stdout.write(JSON.stringify({ port }) + "\n");
}

interface Child {
  port: number;
  stop(): Promise<number>;
}

function spawnServer(kind: string): Promise<Child> {
  const child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url), "--serve", kind], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const next = () => new Promise<Record<string, number>>((resolve) => lines.once("line", (l) => resolve(JSON.parse(l))));
  return next().then(({ port }) => ({
    port,
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
  const bare = await spawnServer("bare");
  const mesh = await spawnServer("mesh");
  await check(bare.port);
  await check(mesh.port);

  const tool = hasH2load() ? "h2load" : "grpc-js clients (in process)";
  const load = hasH2load() ? loadWithH2load : loadWithGrpcJs;
  console.log(
    `GetProduct, unary: ${tool}, ${connections} connections x ${streams} streams, ${seconds} s per round, ${rounds} rounds alternating`,
  );
  const bareRuns: number[] = [];
  const meshRuns: number[] = [];
  for (let r = 1; r <= rounds; r++) {
    // Alternate which goes first, so a drift in machine load hits both alike.
    const order = r % 2 === 1 ? (["bare", "mesh"] as const) : (["mesh", "bare"] as const);
    for (const kind of order) (kind === "bare" ? bareRuns : meshRuns).push(await load((kind === "bare" ? bare : mesh).port));
    console.log(`  round ${r}: bare ${bareRuns.at(-1)!.toFixed(0)} calls/s, mesh ${meshRuns.at(-1)!.toFixed(0)} calls/s`);
  }
  const b = median(bareRuns);
  const m = median(meshRuns);
  const bareRss = await bare.stop();
  const meshRss = await mesh.stop();
  console.log(`bare grpc-js server: ${b.toFixed(0)} calls/s (median), peak RSS ${bareRss} MiB`);
  console.log(`mesh server:         ${m.toFixed(0)} calls/s (median), peak RSS ${meshRss} MiB`);
  console.log(`mesh / bare:         ${(m / b).toFixed(2)}`);
  console.log(`node ${process.version}, ${cpus().length} CPUs, load average ${loadavg()[0].toFixed(1)}`);
}
