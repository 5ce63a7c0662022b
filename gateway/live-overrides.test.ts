// Live overrides through a real NATS KV bucket: a `rate_limit.<upstream>` put
// reaches the gateway's policy within a second, a file-style setConfig keeps
// it, and a bad value changes nothing.
import test from "ava";
import { connect, type NatsConnection } from "nats";
import { deleteLiveValue, meshLiveSettings, putLiveValue, startLiveConfig } from "../mesh/live-config.js";
import { testNatsPrefix, testNatsUrl } from "../mesh/testing/index.js";
import { defaultConfig, parseConfig } from "./config.js";
import { overlayLiveValues, type MeshLiveConfig } from "./live-overrides.js";
import { startEcho, startEchoGateway } from "./testing/harness.js";

const method = "protomesh.testing.v1.EchoService/Limited";
let nc: NatsConnection;
let live: MeshLiveConfig;
let bucket: string;

test.before(async () => {
  nc = await connect({ servers: testNatsUrl() });
  bucket = `${testNatsPrefix().streamPrefix}MESH_CONFIG`;
  live = await startLiveConfig(nc, meshLiveSettings, { bucket, applyLogLevel: false });
});

test.after.always(async () => {
  await live?.stop();
  const jsm = await nc.jetstreamManager();
  await jsm.streams.delete(`KV_${bucket}`).catch(() => {});
  await nc.close();
});

async function until(what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test.serial("a rate_limit put in NATS KV takes effect at the edge, survives a file reload, and a bad value is ignored", async (t) => {
  const up = await startEcho();
  let gwRef: Awaited<ReturnType<typeof startEchoGateway>> | undefined;
  const gw = await startEchoGateway(up.port, {
    config: defaultConfig,
    overlay: (c) => overlayLiveValues(c, live, gwRef?.methods ?? []),
  });
  gwRef = gw;
  const unsubscribe = live.subscribe("rate_limit", () => gw.reapplyConfig());
  try {
    const limitNow = () => gw.pipeline.currentConfig.methods[method]?.rateLimit;

    await putLiveValue(nc, "rate_limit.echo", { requests: 2, burst: 2, periodMs: 60_000 }, bucket);
    await until("the live limit", () => limitNow()?.requests === 2);

    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await fetch(`${gw.url}/v1/limited`);
      statuses.push(r.status);
      await r.text();
    }
    t.deepEqual(statuses, [200, 200, 429, 429], "exactly the live burst passes, then 429");

    // A config file reload (setConfig) keeps the live override on top.
    gw.setConfig(parseConfig({ defaultTimeoutMs: 9000 }));
    t.is(gw.pipeline.currentConfig.defaultTimeoutMs, 9000);
    t.is(limitNow()?.requests, 2);

    // A value that does not parse is rejected by live-config: the limit stays.
    await putLiveValue(nc, "rate_limit.echo", "not json", bucket);
    await new Promise((r) => setTimeout(r, 300));
    t.is(limitNow()?.requests, 2);

    // Deleting the override hands the method back to its declared policy.
    await deleteLiveValue(nc, "rate_limit.echo", bucket);
    await until("the override to go", () => limitNow()?.requests !== 2);
    t.not(limitNow()?.requests, 2);
  } finally {
    unsubscribe();
    await gw.close();
    await up.close(0);
  }
});
