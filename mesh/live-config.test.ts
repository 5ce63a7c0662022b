// Live config against a real NATS (NATS_URL or 127.0.0.1:4222), a unique KV bucket per run.
import test from "ava";
import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { connect, type NatsConnection } from "nats";
import { startLiveConfig, putLiveValue, deleteLiveValue, meshLiveSettings, type MeshLiveConfig, type LiveChange } from "./live-config.js";
import { Invalid } from "./config.js";
import { createRootLogger, logger } from "./telemetry/logger.js";

const bucket = `test_config_${randomBytes(4).toString("hex")}`;
let nc: NatsConnection;
let live: MeshLiveConfig;
const lines: Record<string, unknown>[] = [];

const capture = createRootLogger({
  serviceName: "live-config-test",
  destination: new Writable({
    write(chunk, _enc, done) {
      for (const l of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(l));
      done();
    },
  }),
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test.before(async () => {
  nc = await connect({ servers: process.env.NATS_URL ?? "127.0.0.1:4222" });
  // Stored before the process starts: applied during startLiveConfig.
  await putLiveValue(nc, "timeout_ms.shop.catalog.v1.CatalogService", 2500, bucket);
  await putLiveValue(nc, "breaker", { errorPercent: 40 }, bucket);
  live = await startLiveConfig(nc, meshLiveSettings, { bucket, logger: capture, service: "live-test" });
});

test.after.always(async () => {
  await live?.stop();
  if (!nc) return;
  await (await nc.jetstreamManager()).streams.delete(`KV_${bucket}`).catch(() => undefined);
  await nc.close();
});

test.serial("values stored before start are in force once startLiveConfig resolves", (t) => {
  t.is(live.get("timeout_ms", "shop.catalog.v1.CatalogService.GetProduct"), 2500, "a service-wide timeout covers its methods");
  t.is(live.get("timeout_ms", "shop.order.v1.OrderService.PlaceOrder"), undefined, "no override: the caller's default");
  t.deepEqual(live.get("breaker", "order"), { errorPercent: 40 });
});

test.serial("a put is applied while running, and subscribers hear it", async (t) => {
  const heard: LiveChange<number | undefined>[] = [];
  const off = live.subscribe("timeout_ms", (c) => heard.push(c));
  t.teardown(off);
  const started = Date.now();
  await putLiveValue(nc, "timeout_ms.shop.order.v1.OrderService.PlaceOrder", "1500", bucket);
  await until("timeout applied", () => live.get("timeout_ms", "shop.order.v1.OrderService.PlaceOrder") === 1500);
  t.log(`applied ${Date.now() - started} ms after the put`);
  t.like(heard.at(-1), { key: "timeout_ms.shop.order.v1.OrderService.PlaceOrder", name: "shop.order.v1.OrderService.PlaceOrder", value: 1500, previous: undefined, op: "put" });
  t.is(live.get("timeout_ms", "shop.order.v1.OrderService.GetOrder"), undefined, "a method key does not leak to siblings");
});

test.serial("a bad value is rejected with a log line naming the key and the old value is kept", async (t) => {
  await putLiveValue(nc, "timeout_ms.shop.order.v1.OrderService.PlaceOrder", "fast", bucket);
  await until("rejection logged", () => lines.some((l) => String(l.msg).startsWith("live config: rejected timeout_ms.shop.order.v1.OrderService.PlaceOrder")));
  const line = lines.find((l) => String(l.msg).startsWith("live config: rejected"))!;
  t.is(line.level, "warn");
  t.regex(String(line.msg), /must be an integer in \[1, 600000\], got "fast"; keeping 1500/);
  t.is(live.get("timeout_ms", "shop.order.v1.OrderService.PlaceOrder"), 1500);

  await putLiveValue(nc, "breaker.order", { errorPercent: 300 }, bucket);
  await until("breaker rejection logged", () => lines.some((l) => String(l.msg).startsWith("live config: rejected breaker.order")));
  t.regex(String(lines.find((l) => String(l.msg).startsWith("live config: rejected breaker.order"))!.msg), /"errorPercent" an integer in \[1, 100\]/);
  await putLiveValue(nc, "breaker.order", '{"errorPercent": 30, "colour": 1}', bucket);
  await until("unknown field rejected", () => lines.some((l) => String(l.msg).includes(`"colour" is not one of them`)));
  t.deepEqual(live.get("breaker", "order"), { errorPercent: 40 });
});

test.serial("object families merge from general to specific; a delete goes back", async (t) => {
  await putLiveValue(nc, "breaker.order", { openForMs: 1000 }, bucket);
  await until("breaker.order applied", () => live.get("breaker", "order").openForMs === 1000);
  t.deepEqual(live.get("breaker", "order"), { errorPercent: 40, openForMs: 1000 });
  t.deepEqual(live.get("breaker", "payment"), { errorPercent: 40 });
  await deleteLiveValue(nc, "breaker.order", bucket);
  await until("breaker.order removed", () => live.get("breaker", "order").openForMs === undefined);
  t.deepEqual(live.get("breaker", "order"), { errorPercent: 40 });
});

test.serial("log_level follows the service's key and falls back to the global one", async (t) => {
  t.teardown(() => {
    logger.level = "info";
  });
  await putLiveValue(nc, "log_level.live-test", "debug", bucket);
  await until("debug", () => logger.level === "debug");
  await putLiveValue(nc, "log_level.other-service", "error", bucket);
  await putLiveValue(nc, "log_level", "warn", bucket);
  await until("global warn seen", () => live.get("log_level") === "warn");
  t.is(logger.level, "debug", "the service's own key wins over the global one");
  await putLiveValue(nc, "log_level.live-test", "loud", bucket);
  await until("bad level rejected", () => lines.some((l) => String(l.msg).startsWith("live config: rejected log_level.live-test")));
  t.is(logger.level, "debug");
  await deleteLiveValue(nc, "log_level.live-test", bucket);
  await until("back to the global level", () => logger.level === "warn");
  t.pass();
});

test("an object family refuses a field named like something every object inherits", (t) => {
  // "constructor" and "toString" are found on Object.prototype, not among the family's fields.
  for (const raw of ['{"constructor": 1}', '{"toString": 5}', '{"errorPercent": 30, "__proto__": 1}']) {
    t.true(meshLiveSettings.breaker.parse(raw) instanceof Invalid, raw);
  }
  t.deepEqual(meshLiveSettings.breaker.parse('{"errorPercent": 30}'), { errorPercent: 30 });
});
