// Canary selection, shadow sampling and comparison, config validation and the
// shadow runner, in isolation (injected randomness; no network).
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { selectVariant, stickyKey } from "./canary.js";
import { classifyShadow, grpcPayloads, sameGrpcBodies } from "./compare.js";
import { parseTrafficConfig, TrafficConfigError, type CanaryRule, type ShadowRule } from "./config.js";
import { TrafficCounters } from "./metrics.js";
import { createTrafficPolicy } from "./policy.js";
import { planShadow } from "./shadow-plan.js";
import { ShadowRunner, type ShadowJob } from "./shadow-runner.js";
import { stickyBucket } from "./sticky-hash.js";
import { EchoResponseSchema } from "../../gen/protomesh/testing/v1/echo_pb.js";
import { create, toBinary } from "@bufbuild/protobuf";
import type { Transport } from "@connectrpc/connect";
import { EchoRequestSchema, EchoService } from "../../gen/protomesh/testing/v1/echo_pb.js";
import { routedTransport, type MessageCall } from "./routed-transport.js";

const rule = (o: Partial<CanaryRule> = {}): CanaryRule => ({
  target: "127.0.0.1:6002",
  percent: 10,
  header: "x-canary",
  sticky: "user",
  salt: "up",
  ...o,
});
const noHeaders = new Headers();
const never = () => {
  throw new Error("randomness used where the choice must be sticky");
};

function canaryShare(r: CanaryRule, n: number, key: (i: number) => { userId?: string; ip?: string }): number {
  let canary = 0;
  for (let i = 0; i < n; i++) if (selectVariant(r, { headers: noHeaders, ...key(i) }, never).variant === "canary") canary++;
  return canary / n;
}

test("canary: 10 % of 10 000 users (± 2 %), and 1 %, 50 %, 0 %, 100 %", (t) => {
  const users = (i: number) => ({ userId: `user-${i}` });
  const share = canaryShare(rule({ percent: 10 }), 10_000, users);
  t.true(share >= 0.08 && share <= 0.12, `10 % asked, ${(share * 100).toFixed(2)} % routed`);
  const one = canaryShare(rule({ percent: 1 }), 10_000, users);
  t.true(one >= 0.005 && one <= 0.015, `1 % asked, ${(one * 100).toFixed(2)} % routed`);
  const half = canaryShare(rule({ percent: 50 }), 10_000, users);
  t.true(half >= 0.48 && half <= 0.52, `50 % asked, ${(half * 100).toFixed(2)} % routed`);
  t.is(canaryShare(rule({ percent: 0 }), 2_000, users), 0);
  t.is(canaryShare(rule({ percent: 100 }), 2_000, users), 1);
});

test("canary: 10 % of 10 000 client IPs (± 2 %) when there is no user", (t) => {
  const share = canaryShare(rule({ percent: 10 }), 10_000, (i) => ({ ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` }));
  t.true(share >= 0.08 && share <= 0.12, `${(share * 100).toFixed(2)} % routed`);
});

test("canary: sticky: a user always gets the same version, and raising the percent keeps the canary's users on it", (t) => {
  const r10 = rule({ percent: 10 });
  const r30 = rule({ percent: 30 });
  let inCanary = 0;
  for (let i = 0; i < 2_000; i++) {
    const req = { headers: noHeaders, userId: `u${i}`, ip: `192.168.0.${i % 250}` };
    const first = selectVariant(r10, req, never).variant;
    for (let k = 0; k < 5; k++) t.is(selectVariant(r10, req, never).variant, first);
    if (first === "canary") {
      inCanary++;
      t.is(selectVariant(r30, req, never).variant, "canary", `u${i} left the canary when the share grew`);
    }
  }
  t.true(inCanary > 0);
});

test("canary: the user id wins over the IP; the IP is used without a user; random without either", (t) => {
  const r = rule({ percent: 50 });
  t.deepEqual(stickyKey(r, { headers: noHeaders, userId: "u1", ip: "1.2.3.4" }), { key: "u:u1", kind: "user" });
  t.deepEqual(stickyKey(r, { headers: noHeaders, ip: "1.2.3.4" }), { key: "ip:1.2.3.4", kind: "ip" });
  t.is(stickyKey(r, { headers: noHeaders, ip: "unknown" }), undefined);
  t.deepEqual(stickyKey(rule({ sticky: "ip" }), { headers: noHeaders, userId: "u1", ip: "1.2.3.4" }), { key: "ip:1.2.3.4", kind: "ip" });
  t.is(stickyKey(rule({ sticky: "none" }), { headers: noHeaders, userId: "u1", ip: "1.2.3.4" }), undefined);

  t.deepEqual(selectVariant(r, { headers: noHeaders }, () => 0.3), { variant: "canary", reason: "random" });
  t.deepEqual(selectVariant(r, { headers: noHeaders }, () => 0.7), { variant: "stable", reason: "random" });
  // The same user on two IPs sees one version.
  const a = selectVariant(r, { headers: noHeaders, userId: "someone", ip: "1.1.1.1" }, never);
  const b = selectVariant(r, { headers: noHeaders, userId: "someone", ip: "2.2.2.2" }, never);
  t.deepEqual(a, b);
  t.is(a.reason, "user");
});

test("canary: the override header wins (always/never), other values are ignored, null disables it", (t) => {
  // A user the hash puts on stable at 10 %, and one it puts on the canary.
  let stableUser = "";
  let canaryUser = "";
  for (let i = 0; (!stableUser || !canaryUser) && i < 10_000; i++) {
    const v = selectVariant(rule(), { headers: noHeaders, userId: `p${i}` }, never).variant;
    if (v === "stable") stableUser ||= `p${i}`;
    else canaryUser ||= `p${i}`;
  }
  const h = (v: string) => new Headers({ "x-canary": v });
  t.deepEqual(selectVariant(rule(), { headers: h("always"), userId: stableUser }, never), { variant: "canary", reason: "header" });
  t.deepEqual(selectVariant(rule(), { headers: h("NEVER"), userId: canaryUser }, never), { variant: "stable", reason: "header" });
  t.deepEqual(selectVariant(rule({ percent: 0 }), { headers: h("always") }, never), { variant: "canary", reason: "header" });
  t.is(selectVariant(rule(), { headers: h("maybe"), userId: canaryUser }, never).variant, "canary");
  t.is(selectVariant(rule({ header: null }), { headers: h("always"), userId: stableUser }, never).variant, "stable");
  t.is(selectVariant(rule({ header: "x-version" }), { headers: new Headers({ "x-version": "always" }), userId: stableUser }, never).variant, "canary");
  t.deepEqual(selectVariant(undefined, { headers: h("always") }), { variant: "stable", reason: "no_canary" });
});

test("canary: two upstreams split users independently (salted by upstream)", (t) => {
  let both = 0;
  let first = 0;
  for (let i = 0; i < 10_000; i++) {
    const a = stickyBucket("alpha", `u:${i}`) < 1000;
    const b = stickyBucket("beta", `u:${i}`) < 1000;
    if (a) first++;
    if (a && b) both++;
  }
  // Independent 10 % splits overlap on ~1 % of users, not on all 10 %.
  t.true(both < first / 4, `${both} of ${first} canary users of alpha are canary users of beta too`);
});

test("config: defaults filled, own output accepted again", (t) => {
  const c = parseTrafficConfig({ catalog: { canary: { target: "127.0.0.1:6002", percent: 10 }, shadow: { target: "127.0.0.1:6003" } } });
  t.deepEqual(c.catalog.canary, { target: "127.0.0.1:6002", percent: 10, header: "x-canary", sticky: "user", salt: "catalog" });
  t.like(c.catalog.shadow, { target: "127.0.0.1:6003", percent: 100, timeoutMs: 1000, maxConcurrent: 32, allowNonIdempotent: false, streams: false });
  t.deepEqual(parseTrafficConfig(c), c);
  t.deepEqual(parseTrafficConfig(undefined), {});
});

test("config: bad values are rejected with a message naming the key", (t) => {
  const bad = (raw: unknown, message: string | RegExp) => {
    const e = t.throws(() => parseTrafficConfig(raw), { instanceOf: TrafficConfigError });
    if (typeof message === "string") t.is(e?.message, message);
    else t.regex(e?.message ?? "", message);
  };
  bad({ catalog: { canary: { target: "h:1", percent: 150 } } }, '"traffic.catalog.canary.percent" must be a number from 0 to 100, got 150');
  bad({ catalog: { canary: { target: "h:1", percent: -1 } } }, /"traffic\.catalog\.canary\.percent" must be a number from 0 to 100/);
  bad({ catalog: { canary: { target: "h:1", percent: "10" } } }, /canary\.percent" must be a number/);
  bad({ catalog: { canary: { percent: 10 } } }, '"traffic.catalog.canary.target" is required (the "host:port" to send calls to)');
  bad({ catalog: { shadow: { percent: 10 } } }, /"traffic\.catalog\.shadow\.target" is required/);
  bad({ catalog: { canary: { target: "", percent: 10 } } }, /canary\.target" must be a target/);
  bad({ catalog: { canary: { target: "h:1", sticky: "cookie" } } }, /canary\.sticky" must be "user", "ip" or "none"/);
  bad({ catalog: { canary: { target: "h:1", header: "x canary" } } }, /canary\.header" must be a header name/);
  bad({ catalog: { canary: { target: "h:1", pct: 10 } } }, /unknown key "traffic\.catalog\.canary\.pct"/);
  bad({ catalog: { mirror: {} } }, /unknown key "traffic\.catalog\.mirror"/);
  bad({ catalog: { shadow: { target: "h:1", timeoutMs: 0 } } }, /shadow\.timeoutMs" must be a positive integer/);
  bad({ catalog: { shadow: { target: "h:1", maxConcurrent: 1.5 } } }, /shadow\.maxConcurrent" must be a positive integer/);
  bad({ catalog: { shadow: { target: "h:1", methods: { "bad key!": {} } } } }, /shadow\.methods" key "bad key!"/);
  bad({ catalog: { shadow: { target: "h:1", methods: { Get: { percent: 101 } } } } }, /"traffic\.catalog\.shadow\.methods\.Get\.percent" must be a number from 0 to 100/);
  bad({ catalog: 5 }, '"traffic.catalog" must be an object');
  bad([], '"traffic" must be an object');
});

test("config: unknown upstreams and methods are rejected; update() keeps the old rules on a bad config", (t) => {
  const opts = {
    upstreams: { catalog: "127.0.0.1:6001", order: "127.0.0.1:7001" },
    methods: [{ upstream: "catalog", grpcPath: "/pkg.v1.CatalogService/GetProduct" }],
  };
  const e = t.throws(() => createTrafficPolicy({ catalgo: { canary: { target: "h:1" } } }, opts), { instanceOf: TrafficConfigError });
  t.is(e?.message, '"traffic.catalgo": unknown upstream "catalgo" (known: catalog, order)');
  t.throws(() => createTrafficPolicy({ catalog: { shadow: { target: "h:1", methods: { Nope: {} } } } }, opts), {
    message: '"traffic.catalog.shadow.methods.Nope": no public method "Nope" on upstream "catalog"',
  });
  t.notThrows(() => createTrafficPolicy({ catalog: { shadow: { target: "h:1", methods: { GetProduct: {}, "pkg.v1.CatalogService/GetProduct": {} } } } }, opts));

  const p = createTrafficPolicy({ catalog: { canary: { target: "127.0.0.1:6002", percent: 100 } } }, opts);
  const ctx = { upstream: "catalog", method: "/pkg.v1.CatalogService/GetProduct", idempotent: true, headers: noHeaders, userId: "u1" };
  t.like(p.route(ctx), { target: "127.0.0.1:6002", variant: "canary", reason: "user" });
  t.throws(() => p.update({ catalog: { canary: { target: "127.0.0.1:6002", percent: 101 } } }), { instanceOf: TrafficConfigError });
  t.like(p.route(ctx), { target: "127.0.0.1:6002", variant: "canary" }, "the old rules stay");
  p.update({ catalog: { canary: { target: "127.0.0.1:6009", percent: 0 } } });
  t.like(p.route(ctx), { target: "127.0.0.1:6001", variant: "stable" });
  t.like(p.route({ ...ctx, headers: new Headers({ "x-canary": "always" }) }), { target: "127.0.0.1:6009", variant: "canary" });
  t.like(p.route({ ...ctx, upstream: "order" }), { target: "127.0.0.1:7001", variant: "stable", reason: "no_canary", shadow: undefined });
  t.deepEqual(p.stats().routed, { "catalog canary": 3, "catalog stable": 1 });
  p.close();
});

const shadowRule = (o: Partial<ShadowRule> = {}): ShadowRule => ({
  target: "127.0.0.1:6003",
  percent: 100,
  timeoutMs: 500,
  maxConcurrent: 4,
  allowNonIdempotent: false,
  streams: false,
  methods: {},
  ...o,
});
const call = { method: "/pkg.v1.Svc/Get", idempotent: true, streaming: false };

test("shadow plan: sampled share, non-idempotent only when allowed, streams only when asked, per-method overrides", (t) => {
  t.deepEqual(planShadow(undefined, call), { mirror: false, reason: "no_shadow" });
  t.true(planShadow(shadowRule(), call, () => 0.99).mirror);
  t.like(planShadow(shadowRule({ percent: 5 }), call, () => 0.049), { mirror: true });
  t.like(planShadow(shadowRule({ percent: 5 }), call, () => 0.05), { mirror: false, reason: "not_sampled" });
  t.like(planShadow(shadowRule({ percent: 0 }), call, () => 0), { mirror: false, reason: "not_sampled" });

  const place = { method: "/pkg.v1.Svc/Place", idempotent: false, streaming: false };
  t.like(planShadow(shadowRule(), place, () => 0), { mirror: false, reason: "unsafe" });
  t.like(planShadow(shadowRule({ allowNonIdempotent: true }), place, () => 0), { mirror: true });
  t.like(planShadow(shadowRule({ methods: { Place: { allowNonIdempotent: true } } }), place, () => 0), { mirror: true });
  t.like(planShadow(shadowRule({ allowNonIdempotent: true, methods: { "pkg.v1.Svc/Place": { allowNonIdempotent: false } } }), place, () => 0), {
    mirror: false,
    reason: "unsafe",
  });

  const watch = { method: "/pkg.v1.Svc/Watch", idempotent: true, streaming: true };
  t.like(planShadow(shadowRule(), watch, () => 0), { mirror: false, reason: "streaming" });
  t.like(planShadow(shadowRule({ streams: true }), watch, () => 0), { mirror: true });

  // Only Get mirrored: the upstream share is 0, the method's 100.
  const only = shadowRule({ percent: 0, methods: { Get: { percent: 100 } } });
  t.like(planShadow(only, call, () => 0.5), { mirror: true });
  t.like(planShadow(only, { ...call, method: "/pkg.v1.Svc/List" }, () => 0), { mirror: false, reason: "not_sampled" });

  let sampled = 0;
  const r = shadowRule({ percent: 20 });
  for (let i = 0; i < 1000; i++) if (planShadow(r, call, () => i / 1000).mirror) sampled++;
  t.is(sampled, 200);
});

test("shadow compare: status, body, the shadow's own deadline", (t) => {
  t.is(classifyShadow(0, 0, false, () => true), "match");
  t.is(classifyShadow(0, 0, false, () => false), "body_mismatch");
  t.is(classifyShadow(0, 0, false), "match", "streams: status only");
  t.is(classifyShadow(Code.NotFound, Code.NotFound, false, () => false), "match", "errors: no body to compare");
  t.is(classifyShadow(0, Code.Unavailable, false), "status_mismatch");
  t.is(classifyShadow(Code.NotFound, 0, false), "status_mismatch");
  t.is(classifyShadow(0, Code.DeadlineExceeded, true), "timeout");
  t.is(classifyShadow(0, Code.Canceled, true), "timeout");
  t.is(classifyShadow(0, Code.DeadlineExceeded, false), "status_mismatch", "the upstream's own deadline, not ours");
});

test("shadow compare: raw gRPC bodies by message, map order aside; compressed bodies not compared", (t) => {
  const frame = (payload: Uint8Array, flag = 0) => {
    const b = Buffer.alloc(5 + payload.length);
    b[0] = flag;
    b.writeUInt32BE(payload.length, 1);
    Buffer.from(payload).copy(b, 5);
    return b;
  };
  const a = toBinary(EchoResponseSchema, create(EchoResponseSchema, { index: 1, metadata: { x: "1", y: "2" } }));
  const reordered = toBinary(EchoResponseSchema, create(EchoResponseSchema, { index: 1, metadata: { y: "2", x: "1" } }));
  const other = toBinary(EchoResponseSchema, create(EchoResponseSchema, { index: 2 }));
  t.notDeepEqual(Buffer.from(a), Buffer.from(reordered));
  t.true(sameGrpcBodies(EchoResponseSchema, frame(a), frame(a)));
  t.true(sameGrpcBodies(EchoResponseSchema, frame(a), frame(reordered)));
  t.false(sameGrpcBodies(EchoResponseSchema, frame(a), frame(other)));
  t.false(sameGrpcBodies(EchoResponseSchema, frame(a), frame(a).subarray(0, 6)));
  t.true(sameGrpcBodies(EchoResponseSchema, frame(a), frame(other, 1)));
  t.deepEqual(grpcPayloads(Buffer.concat([frame(a), frame(other)])).messages.length, 2);
});

function gate() {
  let open!: () => void;
  const p = new Promise<void>((r) => (open = r));
  return { p, open };
}

test("shadow runner: returns before sending, drops over the bound and counts it, records every outcome", async (t) => {
  const counters = new TrafficCounters();
  const lines: Array<{ outcome: string }> = [];
  const runner = new ShadowRunner(counters, { debug: (o) => lines.push(o as { outcome: string }) });
  const g = gate();
  let sent = 0;
  const job = (o: Partial<ShadowJob> = {}): ShadowJob => ({
    upstream: "up",
    method: "/pkg.v1.Svc/Get",
    plan: { target: "t", timeoutMs: 10_000, maxConcurrent: 2 },
    primaryCode: 0,
    send: async () => {
      sent++;
      await g.p;
      return { code: 0, sameBody: () => true };
    },
    ...o,
  });
  runner.run(job());
  t.is(sent, 0, "the shadow call starts on a later turn, never inside the caller's");
  runner.run(job());
  runner.run(job()); // over the bound of 2
  t.is(runner.inFlight("up"), 2);
  t.deepEqual(counters.snapshot().shadow, { "up dropped": 1 });
  await new Promise((r) => setImmediate(r));
  t.is(sent, 2);
  g.open();
  await runner.idle();
  const roomy = { target: "t", timeoutMs: 10_000, maxConcurrent: 10 };
  runner.run(job({ plan: roomy, send: async () => ({ code: 0, sameBody: () => false }) }));
  runner.run(job({ plan: roomy, send: async () => Promise.reject(new ConnectError("down", Code.Unavailable)) }));
  runner.run(job({ plan: roomy, primaryCode: Code.NotFound, send: async () => ({ code: Code.NotFound }) }));
  await runner.idle();
  runner.run(
    job({
      plan: { target: "t", timeoutMs: 20, maxConcurrent: 2 },
      send: (signal) =>
        new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason))),
    }),
  );
  await runner.idle();
  t.deepEqual(counters.snapshot().shadow, {
    "up dropped": 1,
    "up match": 3,
    "up body_mismatch": 1,
    "up status_mismatch": 1,
    "up timeout": 1,
  });
  t.is(lines.length, 7, "one debug line per shadow call");
  t.is(runner.inFlight(), 0);
});

test("routed transport: a call is mirrored once, after its outcome, never for an UNAVAILABLE attempt; streams after their end", async (t) => {
  const answers: Array<Error | undefined> = [new ConnectError("down", Code.Unavailable), undefined, undefined];
  const seen: string[] = [];
  const fake = {
    async unary(_m: unknown, _s: unknown, _t: unknown, _h: unknown, input: { id: string }) {
      seen.push(input.id);
      const e = answers.shift();
      if (e) throw e;
      return { message: create(EchoResponseSchema, { index: seen.length }) };
    },
    async stream(_m: unknown, _s: unknown, _t: unknown, _h: unknown, input: AsyncIterable<{ id: string }>) {
      for await (const m of input) seen.push(`stream ${m.id}`);
      return {
        message: (async function* () {
          yield create(EchoResponseSchema, { index: 0 });
          yield create(EchoResponseSchema, { index: 1 });
          throw new ConnectError("gone", Code.NotFound);
        })(),
      };
    },
  } as unknown as Transport;
  t.is(routedTransport(fake, undefined), fake, "nothing to mirror: the transport itself");

  const mirrored: MessageCall[] = [];
  const tr = routedTransport(fake, (c) => mirrored.push(c));
  const req = create(EchoRequestSchema, { id: "a" });
  await t.throwsAsync(tr.unary(EchoService.method.echo, undefined, 100, { "x-mesh-user-id": "u1" }, req), { instanceOf: ConnectError });
  t.is(mirrored.length, 0, "UNAVAILABLE: no answer to compare (and a retry may follow)");
  await tr.unary(EchoService.method.echo, undefined, 100, { "x-mesh-user-id": "u1" }, req);
  t.is(mirrored.length, 1);
  t.like(mirrored[0], { kind: "unary", code: 0, request: req });
  t.is(mirrored[0].headers.get("x-mesh-user-id"), "u1");
  await tr.unary(EchoService.method.echo, undefined, 100, undefined, req);
  t.is(mirrored.length, 1, "at most once per call");

  const streamMirrored: MessageCall[] = [];
  const st = routedTransport(fake, (c) => streamMirrored.push(c));
  const res = await st.stream(EchoService.method.echoStream, undefined, undefined, undefined, (async function* () {
    yield create(EchoRequestSchema, { id: "s" });
  })());
  let n = 0;
  await t.throwsAsync(async () => {
    for await (const _ of res.message) {
      n++;
      t.is(streamMirrored.length, 0, "not before the stream ends");
    }
  });
  t.is(n, 2);
  t.deepEqual(seen, ["a", "a", "a", "stream s"], "the request reached the primary");
  t.is(streamMirrored.length, 1);
  t.like(streamMirrored[0], { kind: "server_streaming", code: Code.NotFound });
});
