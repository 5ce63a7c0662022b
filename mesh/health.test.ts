// grpc.health.v1 over real TCP, driven by a readiness probe the test controls.
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { CatalogService } from "../gen/shop/catalog/v1/catalog_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { closeMeshClients, createMeshClient } from "./client.js";
import { HealthState, LIVENESS_SERVICE, ServingStatus } from "./health.js";
import { serve, startMeshServer } from "./server.js";
import type { MeshServer } from "./server.js";

let databaseUp = true;
const logged: string[] = [];
const logger = {
  info: (_: object, msg?: string) => void logged.push(`info ${msg}`),
  warn: (_: object, msg?: string) => void logged.push(`warn ${msg}`),
  error: (_: object, msg?: string) => void logged.push(`error ${msg}`),
};
let server: MeshServer;

test.before(async () => {
  server = await startMeshServer({
    name: "health-test",
    host: "127.0.0.1",
    services: [serve(CatalogService, {})],
    readiness: () => {
      if (!databaseUp) throw new Error("connect ECONNREFUSED 127.0.0.1:5432");
    },
    readinessIntervalMs: 30,
    logger,
  });
});

test.after.always(async () => {
  closeMeshClients();
  await server?.close(100);
});

const health = () => createMeshClient(Health, `127.0.0.1:${server.port}`);

async function until(pred: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("condition never became true");
}

test.serial("Check and Watch follow the readiness probe: SERVING, NOT_SERVING while it fails, SERVING again", async (t) => {
  t.is((await health().check({ service: "" })).status, ServingStatus.SERVING);
  t.is((await health().check({ service: "shop.catalog.v1.CatalogService" })).status, ServingStatus.SERVING);

  const controller = new AbortController();
  const seen: ServingStatus[] = [];
  const watching = (async () => {
    try {
      for await (const res of health().watch({ service: "shop.catalog.v1.CatalogService" }, { signal: controller.signal })) {
        seen.push(res.status);
      }
    } catch (e) {
      if (ConnectError.from(e).code !== Code.Canceled) throw e;
    }
  })();
  await until(async () => seen.length === 1);

  databaseUp = false;
  await until(async () => (await health().check({ service: "" })).status === ServingStatus.NOT_SERVING);
  t.is((await health().check({ service: "shop.catalog.v1.CatalogService" })).status, ServingStatus.NOT_SERVING);
  const list = await health().list({});
  t.is(list.statuses[""]?.status, ServingStatus.NOT_SERVING);
  // Liveness is not readiness: the process is alive, and restarting it would not bring the database back.
  t.is((await health().check({ service: LIVENESS_SERVICE })).status, ServingStatus.SERVING);

  databaseUp = true;
  await until(async () => (await health().check({ service: "" })).status === ServingStatus.SERVING);
  await until(async () => seen.length >= 3);
  controller.abort();
  await watching;
  t.deepEqual(seen, [ServingStatus.SERVING, ServingStatus.NOT_SERVING, ServingStatus.SERVING]);
  t.deepEqual(logged, ["info ready", "warn not ready", "info ready"]);
});

test("an unknown service is NOT_FOUND for Check and SERVICE_UNKNOWN for Watch", async (t) => {
  const err = ConnectError.from(await t.throwsAsync(health().check({ service: "nope.v1.Nope" })));
  t.is(err.code, Code.NotFound);
  const controller = new AbortController();
  for await (const res of health().watch({ service: "nope.v1.Nope" }, { signal: controller.signal })) {
    t.is(res.status, ServingStatus.SERVICE_UNKNOWN);
    controller.abort();
    break;
  }
});

test("a probe that hangs counts as failed; closing ends Watch streams", async (t) => {
  const state = new HealthState(["a.v1.A"]);
  await state.startProbe(() => new Promise(() => {}), { timeoutMs: 50, intervalMs: 60_000 });
  t.is(state.get(""), ServingStatus.NOT_SERVING);
  t.is(state.get("a.v1.A"), ServingStatus.NOT_SERVING);
  state.stop();
  t.true(state.stopSignal.aborted);
});

test("a probe returning false is not ready", async (t) => {
  const state = new HealthState();
  let ok = false;
  await state.startProbe(() => ok, { intervalMs: 60_000 });
  t.is(state.get(""), ServingStatus.NOT_SERVING);
  ok = true;
  t.true(await state.checkNow());
  t.is(state.get(""), ServingStatus.SERVING);
  state.stop();
});

test("a client built from the official health.proto (grpc-health-check's copy) understands the service", async (t) => {
  // Interop check against the published definition, loaded the classic way.
  const { createRequire } = await import("node:module");
  const require = createRequire(import.meta.url);
  const protoLoader = await import("@grpc/proto-loader");
  const grpc = await import("@grpc/grpc-js");
  const { protoPath } = require("grpc-health-check") as { protoPath: string };
  const def = protoLoader.loadSync(protoPath, { enums: String, keepCase: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    grpc: { health: { v1: { Health: new (addr: string, creds: unknown) => Record<string, Function> & { close(): void } } } };
  };
  const c = new pkg.grpc.health.v1.Health(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
  const res = await new Promise<{ status: string }>((resolve, reject) =>
    c.check({ service: "" }, (err: Error | null, r: { status: string }) => (err ? reject(err) : resolve(r))),
  );
  c.close();
  t.true(["SERVING", "NOT_SERVING"].includes(res.status));
});
