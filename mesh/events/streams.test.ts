import test from "ava";
import { connect, nanos } from "nats";
import { testNatsPrefix, testNatsUrl } from "../testing/index.js";
import { packageStream } from "./naming.js";
import { ensureStreams } from "./streams.js";

test("ensureStreams creates the context and dead-letter streams, and is idempotent", async (t) => {
  const nc = await connect({ servers: testNatsUrl() });
  const jsm = await nc.jetstreamManager();
  const { subjectPrefix: prefix, streamPrefix } = testNatsPrefix();
  t.teardown(async () => {
    for await (const name of jsm.streams.names()) if (name.startsWith(streamPrefix)) await jsm.streams.delete(name);
    await nc.close();
  });
  const specs = [packageStream("shop.order.v1", prefix), packageStream("shop.payment.v1", prefix)];
  const first = await ensureStreams(jsm, specs, { prefix, duplicateWindowMs: 60_000, storage: "memory" });
  t.deepEqual(first.map((i) => i.config.name), [`${streamPrefix}SHOP_ORDER`, `${streamPrefix}SHOP_PAYMENT`, `${streamPrefix}DEAD_LETTERS`]);
  t.deepEqual(first[0].config.subjects, [`${prefix}shop.order.v1.>`]);
  t.deepEqual(first[2].config.subjects, [`${prefix}deadletter.>`]);
  t.is(first[0].config.duplicate_window, nanos(60_000));

  // Every replica calls it at start; a second call with a new window updates in place.
  const again = await ensureStreams(jsm, specs, { prefix, duplicateWindowMs: 90_000, storage: "memory" });
  t.is(again.length, 3);
  t.is(again[1].config.duplicate_window, nanos(90_000));
  t.is((await jsm.streams.info(`${streamPrefix}SHOP_ORDER`)).config.duplicate_window, nanos(90_000));
});
