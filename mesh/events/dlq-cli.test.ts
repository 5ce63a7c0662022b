import test from "ava";
import { create } from "@bufbuild/protobuf";
import { OrderConfirmedSchema } from "../../gen/shop/order/v1/order_pb.js";
import { PermanentEventError, startConsumer } from "./consumer.js";
import { main } from "./dlq-cli.js";
import { packageStream } from "./naming.js";
import { publishEvent } from "./publisher.js";
import { ensureStreams } from "./streams.js";
import { createEventsTables, createEventsTestEnv, eventsSchema, eventually, type EventsTestEnv } from "./test-support.js";

let env: EventsTestEnv;
test.before(async () => {
  env = await createEventsTestEnv();
  await ensureStreams(env.jsm, [packageStream("shop.order.v1", env.prefix)], { prefix: env.prefix, storage: "memory" });
  process.env.NATS_SUBJECT_PREFIX = env.prefix; // this file's process only
});
test.after.always(() => env?.close());

async function run(...argv: string[]): Promise<{ code: number; out: string }> {
  const lines: string[] = [];
  const code = await main(argv, (l) => lines.push(l));
  return { code, out: lines.join("\n") };
}

test("list, replay and a precise error for a bad seq", async (t) => {
  const s = eventsSchema("dlq_cli");
  await createEventsTables(env.db, s);
  let fail = true;
  let handled = 0;
  const c = await startConsumer({
    name: "cli-victim",
    event: OrderConfirmedSchema,
    db: env.db,
    inbox: s.inbox,
    js: env.js,
    prefix: env.prefix,
    handler: async () => {
      if (fail) throw new PermanentEventError("no such user");
      handled++;
    },
  });
  t.teardown(() => c.stop());

  t.like(await run("list"), { code: 0, out: "no dead letters" });
  const { eventId } = await publishEvent(env.js, OrderConfirmedSchema, create(OrderConfirmedSchema, { orderId: "cli-1" }), { prefix: env.prefix });
  await eventually("a dead letter", () => c.stats().deadLettered === 1);

  const listed = await run("list", "--consumer", "cli-victim", "--json");
  const [entry] = JSON.parse(listed.out) as { seq: number; eventId: string; error: string }[];
  t.is(entry.eventId, eventId);
  t.regex(entry.error, /no such user/);
  t.regex((await run("list")).out, new RegExp(`^${entry.seq}\\t.*cli-victim\\tshop\\.order\\.v1\\.OrderConfirmed\\t${eventId}\\t1x\\tpermanent: no such user$`));

  fail = false;
  t.regex((await run("replay", String(entry.seq))).out, /^replayed dead letter \d+ -> /);
  await eventually("the replay handled", () => handled === 1);
  t.like(await run("list"), { out: "no dead letters" });

  await t.throwsAsync(run("replay", "abc"), { message: 'replay: <seq> must be a positive integer, got "abc"' });
  t.is((await run("frobnicate")).code, 2);
});
