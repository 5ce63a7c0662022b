import test from "ava";
import { probeTarget } from "./readiness.js";
import { startEcho, startEchoGateway } from "./testing/harness.js";

test("probeTarget reads host:port and dns targets, and leaves discovery targets alone", (t) => {
  t.deepEqual(probeTarget("127.0.0.1:5002"), { host: "127.0.0.1", port: 5002 });
  t.deepEqual(probeTarget("localhost:5002"), { host: "localhost", port: 5002 });
  t.deepEqual(probeTarget("dns:///catalog:5002"), { host: "catalog", port: 5002 });
  t.deepEqual(probeTarget("dns://8.8.8.8/catalog:5002"), { host: "catalog", port: 5002 });
  t.deepEqual(probeTarget("[::1]:5002"), { host: "::1", port: 5002 });
  t.is(probeTarget("mesh:///catalog"), undefined);
  t.is(probeTarget("unix:/tmp/x.sock"), undefined);
});

test("/readyz is ready while the upstream answers and names it once it is gone", async (t) => {
  const up = await startEcho();
  const gw = await startEchoGateway(up.port);
  try {
    const ready = await fetch(`${gw.url}/readyz`);
    t.is(ready.status, 200);
    t.deepEqual(await ready.json(), { status: "ready" });

    await up.close(0);
    // Probes are cached for a second.
    let body: unknown;
    let status = 0;
    for (const until = Date.now() + 5000; Date.now() < until; ) {
      const r = await fetch(`${gw.url}/readyz`);
      status = r.status;
      body = await r.json();
      if (status === 503) break;
      await new Promise((res) => setTimeout(res, 200));
    }
    t.is(status, 503);
    t.deepEqual(body, { status: "unready", unreachable: ["echo"] });
    // Liveness is not readiness: the process itself is fine.
    t.is((await fetch(`${gw.url}/healthz`)).status, 200);
  } finally {
    await gw.close();
  }
});
