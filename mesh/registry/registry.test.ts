// Discovery against a real NATS (NATS_URL or 127.0.0.1:4222), a unique KV bucket per run.
import test from "ava";
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { connect, type NatsConnection } from "nats";
import { registerInstance, watchInstances, listInstances, type InstanceRecord } from "./registry.js";
import { registerMeshResolver, meshTarget } from "./resolver.js";

const bucket = `test_registry_${randomBytes(4).toString("hex")}`;
const HEARTBEAT_MS = 150;
const STALE_MS = 800;
let nc: NatsConnection;

test.before(async () => {
  nc = await connect({ servers: process.env.NATS_URL ?? "127.0.0.1:4222" });
  registerMeshResolver(nc, { bucket, staleAfterMs: STALE_MS });
});

test.after.always(async () => {
  if (!nc) return;
  await (await nc.jetstreamManager()).streams.delete(`KV_${bucket}`).catch(() => undefined);
  await nc.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

// A byte-echo gRPC method that answers with the name of the instance that served it.
const bytes = (b: Buffer) => b;
const whoami = {
  path: "/test.registry.v1.WhoService/Who",
  requestStream: false,
  responseStream: false,
  requestSerialize: bytes,
  requestDeserialize: bytes,
  responseSerialize: bytes,
  responseDeserialize: bytes,
};

async function startInstance(id: string): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  server.addService({ Who: whoami } as grpc.ServiceDefinition, {
    Who: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => done(null, Buffer.from(id)),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { server, port };
}

function who(client: grpc.Client): Promise<string> {
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(whoami.path, bytes, bytes, Buffer.alloc(0), { deadline: Date.now() + 3_000 }, (err, res) =>
      err ? reject(err) : resolve(res!.toString()),
    ),
  );
}

test.serial("a watcher sees registrations, a clean stop at once, and a crash after the stale age", async (t) => {
  const name = "svc-watch";
  const watch = await watchInstances(nc, name, { bucket, staleAfterMs: STALE_MS });
  t.teardown(() => watch.stop());
  await watch.ready;
  t.deepEqual(watch.instances(), []);

  const a = await registerInstance(nc, { name, instance: "a", address: "127.0.0.1:1001", zone: "z1" }, { bucket, heartbeatMs: HEARTBEAT_MS });
  const b = await registerInstance(nc, { name, instance: "b", address: "127.0.0.1:1002" }, { bucket, heartbeatMs: HEARTBEAT_MS });
  await until("two instances", () => watch.instances().length === 2);
  const [ra] = watch.instances() as [InstanceRecord];
  t.like(ra, { name, instance: "a", address: "127.0.0.1:1001", zone: "z1" });
  t.truthy(ra.version);

  const changes: string[][] = [];
  watch.onChange((list) => changes.push(list.map((r) => r.instance)));

  await b.stop(); // deletes its key
  await until("b's delete reported", () => changes.at(-1)?.length === 1);
  t.deepEqual(changes.at(-1), ["a"]);

  // A crashed instance: no delete, no more heartbeats, only its age tells. While another
  // instance is fresh it leaves the view after STALE_MS; alone, it stays as a last resort
  // until 3 × STALE_MS (so a stalled reader does not drop every address at once).
  const c = await registerInstance(nc, { name, instance: "c", address: "127.0.0.1:1003" }, { bucket, heartbeatMs: HEARTBEAT_MS });
  await until("c listed", () => watch.instances().length === 2);
  c.abandon();
  await until("c reported stale", () => changes.at(-1)?.join() === "a", STALE_MS * 4);

  await sleep(STALE_MS); // so a's last refresh is well after c's

  a.abandon();
  await sleep(HEARTBEAT_MS * 2);
  t.is(watch.instances().length, 1, "still fresh shortly after the last heartbeat");
  await sleep(STALE_MS * 1.5);
  t.deepEqual(watch.instances().map((r) => r.instance), ["a"], "the last instance is kept a while longer");
  await until("a reported gone", () => changes.at(-1)?.length === 0, STALE_MS * 6);
  t.deepEqual(watch.instances(), []);

  t.deepEqual(await listInstances(nc, name, { bucket, staleAfterMs: STALE_MS }), []);
  await t.throwsAsync(registerInstance(nc, { name: "bad.name", address: "x:1" }, { bucket }), { message: /must match/ });
});

test.serial("mesh:/// round-robins over two instances and keeps succeeding when one dies", async (t) => {
  const name = "svc-rr";
  const one = await startInstance("one");
  const two = await startInstance("two");
  const regOne = await registerInstance(nc, { name, instance: "one", address: `127.0.0.1:${one.port}` }, { bucket, heartbeatMs: HEARTBEAT_MS });
  const regTwo = await registerInstance(nc, { name, instance: "two", address: `127.0.0.1:${two.port}` }, { bucket, heartbeatMs: HEARTBEAT_MS });
  t.teardown(async () => {
    await regTwo.stop();
    two.server.forceShutdown();
  });

  const client = new grpc.Client(meshTarget(name), grpc.credentials.createInsecure());
  t.teardown(() => client.close());

  const first = await who(client);
  t.true(["one", "two"].includes(first));
  // Both instances are in the list once both subchannels connect; then calls alternate.
  const served = new Set<string>();
  for (let i = 0; i < 40 && served.size < 2; i++) served.add(await who(client));
  t.deepEqual([...served].sort(), ["one", "two"], "calls spread over both instances");
  const order = [await who(client), await who(client), await who(client), await who(client)];
  t.deepEqual(new Set(order).size, 2);
  t.not(order[0], order[1], "round-robin alternates");

  // Kill "one" the hard way: its server goes and its heartbeats stop; its record stays until stale.
  regOne.abandon();
  one.server.forceShutdown();
  const after: string[] = [];
  const started = Date.now();
  while (Date.now() - started < STALE_MS * 2) {
    after.push(await who(client)); // every call must succeed
  }
  t.true(after.length > 5);
  t.true(after.slice(-5).every((w) => w === "two"), "only the live instance answers");

  const live = await listInstances(nc, name, { bucket, staleAfterMs: STALE_MS });
  t.deepEqual(live.map((r) => r.instance), ["two"], "the dead instance has left the registry view");
});

test.serial("static addresses and dns:/// keep working next to mesh:///", async (t) => {
  const inst = await startInstance("static");
  t.teardown(() => inst.server.forceShutdown());
  for (const target of [`127.0.0.1:${inst.port}`, `dns:///localhost:${inst.port}`]) {
    const client = new grpc.Client(target, grpc.credentials.createInsecure());
    t.is(await who(client), "static", target);
    client.close();
  }
});

test.serial("a mesh:/// target with no live instance fails with UNAVAILABLE, then works once one registers", async (t) => {
  const name = "svc-late";
  const client = new grpc.Client(meshTarget(name), grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const err = await t.throwsAsync(who(client));
  t.is((err as grpc.ServiceError).code, grpc.status.UNAVAILABLE);
  t.regex((err as Error).message, /no live instance of "svc-late"/);

  const inst = await startInstance("late");
  const reg = await registerInstance(nc, { name, instance: "late", address: `127.0.0.1:${inst.port}` }, { bucket, heartbeatMs: HEARTBEAT_MS });
  t.teardown(async () => {
    await reg.stop();
    inst.server.forceShutdown();
  });
  let answer: string | undefined;
  for (let i = 0; i < 50 && answer !== "late"; i++) {
    answer = await who(client).catch(() => undefined);
    if (answer !== "late") await sleep(100);
  }
  t.is(answer, "late");
});

test.serial("joinMesh registers this process under its advertised address", async (t) => {
  const { joinMesh } = await import("./announce.js");
  const reg = await joinMesh(nc, { name: "svc-join", port: 5999, bucket, heartbeatMs: HEARTBEAT_MS, staleAfterMs: STALE_MS });
  t.teardown(() => reg.stop());
  const [only] = await listInstances(nc, "svc-join", { bucket, staleAfterMs: STALE_MS });
  t.like(only, { name: "svc-join", address: "127.0.0.1:5999", instance: reg.record.instance });
});
