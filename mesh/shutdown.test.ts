// Graceful shutdown of a real server process: SIGTERM during a slow call lets
// the call finish, refuses new ones, runs the closers in reverse order and
// exits 0.
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { CatalogService } from "../gen/shop/catalog/v1/catalog_pb.js";
import { createMeshTransport } from "./client.js";
import { createClient } from "@connectrpc/connect";
import { createShutdown } from "./shutdown.js";
import { spawnFixture } from "./testing/spawn-fixture.js";

test("SIGTERM drains an in-flight call, runs closers in reverse order and exits 0", async (t) => {
  const fixture = await spawnFixture();
  const transport = createMeshTransport({ target: `127.0.0.1:${fixture.port}`, retry: { maxAttempts: 1 } });
  const client = createClient(CatalogService, transport);
  try {
    const slow = client.getProduct({ id: "slow:800" }, { timeoutMs: 5000 });
    await fixture.waitFor((l) => l.started === "slow:800");
    fixture.child.kill("SIGTERM");

    const res = await slow;
    t.is(res.product?.id, "slow:800");
    t.is(res.product?.price?.amountMinor, 1250n);

    t.is(await fixture.exited, 0);
    const closed = fixture.lines.filter((l) => "closed" in l).map((l) => l.closed);
    t.deepEqual(closed, ["grpc", "nats", "db"]);

    // Nobody listens any more.
    const err = ConnectError.from(await t.throwsAsync(client.getProduct({ id: "slow:1" })));
    t.is(err.code, Code.Unavailable);
  } finally {
    transport.close();
    fixture.child.kill("SIGKILL");
  }
});

test("a closer that fails or hangs does not stop the others; the exit code says so", async (t) => {
  const order: string[] = [];
  const shutdown = createShutdown({ exit: false, timeoutMs: 200, log: () => {} });
  shutdown.add("db", () => void order.push("db"));
  shutdown.add("hangs", () => new Promise(() => order.push("hangs")));
  shutdown.add("fails", () => {
    order.push("fails");
    throw new Error("nope");
  });
  const code = await shutdown.run("test");
  t.is(code, 1);
  t.deepEqual(order, ["fails", "hangs", "db"]);
  // Running again is the same run.
  t.is(await shutdown.run("again"), 1);
});
