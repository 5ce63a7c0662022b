// The environment's part of the gateway config (withEnvironment) and that a reloaded file keeps
// it: the file's rateLimit.replicas and cors.allowedOrigins replaced GATEWAY_REPLICAS x workers
// and CORS_ORIGINS on the first reload.
import test from "ava";
import { ConfigError, parseConfig, withEnvironment } from "./config.js";
import { startEcho, startEchoGateway } from "./testing/harness.js";

const env = { GATEWAY_REPLICAS: "3", CORS_ORIGINS: "https://shop.example, https://admin.example" };
// A file as the README shows it: it sets both keys the environment adds to.
const file = { rateLimit: { replicas: 1 }, cors: { allowedOrigins: ["https://file.example", "https://shop.example"] } };

test("withEnvironment: replicas x workers share a limit, and CORS_ORIGINS follow the file's origins once", (t) => {
  const c = withEnvironment(parseConfig(file), env, 2);
  t.is(c.rateLimit.replicas, 6);
  t.deepEqual(c.cors.allowedOrigins, ["https://file.example", "https://shop.example", "https://admin.example"]);
  t.is(withEnvironment(parseConfig(file), {}, 1).rateLimit.replicas, 1, "without the variable, the file's value");
  for (const bad of ["0", "-2", "1.5", "two"]) {
    t.throws(() => withEnvironment(parseConfig({}), { GATEWAY_REPLICAS: bad }), { instanceOf: ConfigError, message: /GATEWAY_REPLICAS/ });
  }
});

test("a file reloaded into a running gateway keeps the environment's replicas and origins", async (t) => {
  const up = await startEcho();
  const gw = await startEchoGateway(up.port, { config: parseConfig(file), overlay: (c) => withEnvironment(c, env, 2) });
  t.teardown(async () => {
    await gw.close();
    await up.close(0);
  });
  const inForce = () => gw.pipeline.currentConfig;
  t.is(inForce().rateLimit.replicas, 6);
  // What the file watcher does with an edited file: parse it and set it.
  gw.setConfig(parseConfig({ ...file, defaultTimeoutMs: 9000 }));
  t.is(inForce().defaultTimeoutMs, 9000);
  t.is(inForce().rateLimit.replicas, 6, "still GATEWAY_REPLICAS x workers, not the file's 1");
  const preflight = await fetch(`${gw.url}/v1/echo/x`, {
    method: "OPTIONS",
    headers: { origin: "https://admin.example", "access-control-request-method": "GET" },
  });
  t.is(preflight.headers.get("access-control-allow-origin"), "https://admin.example", "a CORS_ORIGINS origin is still allowed");
});
