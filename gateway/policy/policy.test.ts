// Policy modules in isolation: a fake clock for the rate limiter, real jose
// tokens for authentication.
import test from "ava";
import { generateKeyPairSync } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { SignJWT, UnsecuredJWT } from "jose";
import { parseConfig, effectivePolicy } from "../config.js";
import { describeService } from "../descriptors.js";
import { EchoService } from "../../gen/protomesh/testing/v1/echo_pb.js";
import { EdgeError } from "../errors.js";
import { authorize, createAuthenticator } from "./auth.js";
import { preflight, corsResponseHeaders } from "./cors.js";
import { RateLimiter, rateLimitHeaders, rateLimitKey } from "./rate-limit.js";
import { RetryBudget, withRetries } from "./retry.js";
import { effectiveTimeout, formatGrpcTimeout, parseGrpcTimeout } from "./timeout.js";
import { Breakers, throughBreaker } from "./circuit-breaker.js";

const spec = { requests: 5, periodMs: 1000, burst: 5, key: "ip" as const };

function clock() {
  let t = 1_000;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

test("rate limit: exactly `burst` requests, then rejection with Retry-After, then refill", (t) => {
  const c = clock();
  const rl = new RateLimiter({ now: c.now });
  for (let i = 0; i < 5; i++) t.true(rl.take("k", spec).allowed, `request ${i + 1}`);
  const d = rl.take("k", spec);
  t.false(d.allowed);
  t.is(d.remaining, 0);
  t.is(d.retryAfterSec, 1);
  const h = rateLimitHeaders(d);
  t.is(h["retry-after"], "1");
  t.is(h["ratelimit-policy"], '"default";q=5;w=1');
  t.regex(h.ratelimit, /^"default";r=0;t=1$/);
  c.advance(200); // one token back (5 per second)
  t.true(rl.take("k", spec).allowed);
  t.false(rl.take("k", spec).allowed);
  c.advance(1000);
  t.is(rl.take("k", spec).remaining, 4);
});

test("rate limit: keys are independent", (t) => {
  const rl = new RateLimiter({ now: clock().now });
  for (let i = 0; i < 5; i++) rl.take("a", spec);
  t.false(rl.take("a", spec).allowed);
  t.true(rl.take("b", spec).allowed);
});

test("rate limit: memory is bounded and an evicted key does not come back full", (t) => {
  const c = clock();
  const rl = new RateLimiter({ now: c.now, maxKeys: 100 });
  for (let i = 0; i < 5; i++) rl.take("victim", spec);
  t.false(rl.take("victim", spec).allowed);
  for (let i = 0; i < 1000; i++) rl.take(`flood-${i}`, spec); // pushes "victim" out
  t.true(rl.size <= 100);
  t.false(rl.take("victim", spec).allowed, "still empty after eviction");
});

test("rate limit: shadow mode counts without rejecting", (t) => {
  const rl = new RateLimiter({ now: clock().now, shadow: true });
  for (let i = 0; i < 5; i++) rl.take("k", spec);
  const d = rl.take("k", spec);
  t.true(d.allowed);
  t.true(d.shadowRejected);
});

test("rate limit: each of N replicas enforces 1/N", (t) => {
  const rl = new RateLimiter({ now: clock().now, replicas: 5 });
  t.true(rl.take("k", spec).allowed);
  t.false(rl.take("k", spec).allowed);
});

test("rate limit key: user, api key, ip fallbacks", (t) => {
  t.is(rateLimitKey({ ...spec, key: "user" }, { ip: "1.2.3.4", userId: "u1", apiKey: null }), "u:u1");
  t.is(rateLimitKey({ ...spec, key: "user" }, { ip: "1.2.3.4", userId: undefined, apiKey: null }), "ip:1.2.3.4");
  t.is(rateLimitKey({ ...spec, key: "api_key" }, { ip: "1.2.3.4", userId: undefined, apiKey: "k" }), "k:k");
});

const secret = "test-secret-test-secret-test-secret-0123";
const jwt = { secret, issuer: "protomesh", audience: "protomesh-shop" };
const auth = createAuthenticator(jwt);
const key = new TextEncoder().encode(secret);
const sign = (claims: Record<string, unknown>, o: { iss?: string; aud?: string; exp?: number | string; nbf?: number | string } = {}) => {
  let j = new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256" })
    .setSubject("u1")
    .setIssuer(o.iss ?? jwt.issuer)
    .setAudience(o.aud ?? jwt.audience)
    .setExpirationTime(o.exp ?? "1h");
  if (o.nbf !== undefined) j = j.setNotBefore(o.nbf);
  return j.sign(key);
};

test("auth: a valid token gives the caller", async (t) => {
  t.deepEqual(await auth.authenticate(`Bearer ${await sign({ role: "admin" })}`), { userId: "u1", role: "admin" });
  t.is(await auth.authenticate(undefined), undefined);
});

const badTokens: Array<[string, () => Promise<string>, RegExp]> = [
  ["expired", () => sign({ role: "user" }, { exp: Math.floor(Date.now() / 1000) - 60 }), /expired/],
  ["not yet valid", () => sign({ role: "user" }, { nbf: Math.floor(Date.now() / 1000) + 600 }), /not yet valid/],
  ["wrong audience", () => sign({ role: "user" }, { aud: "someone-else" }), /audience/],
  ["wrong issuer", () => sign({ role: "user" }, { iss: "evil" }), /issuer/],
  [
    "forged signature",
    async () => {
      const tok = await sign({ role: "admin" });
      const [h, p] = tok.split(".");
      return `${h}.${p}.${Buffer.from("forged-signature-bytes-xxxxxxxxxxxxx").toString("base64url")}`;
    },
    /signature/,
  ],
  [
    "alg none",
    async () => new UnsecuredJWT({ role: "admin" }).setSubject("u1").setIssuer(jwt.issuer).setAudience(jwt.audience).setExpirationTime("1h").encode(),
    /algorithm|invalid/,
  ],
  ["no role", () => sign({}), /role/],
  ["garbage", async () => "not-a-jwt", /invalid/],
];
for (const [name, make, why] of badTokens) {
  test(`auth: ${name} token is 401 with WWW-Authenticate`, async (t) => {
    const e = await t.throwsAsync(auth.authenticate(`Bearer ${await make()}`));
    t.true(e instanceof EdgeError);
    const err = e as EdgeError;
    t.is(err.code, Code.Unauthenticated);
    t.is(err.httpStatus, 401);
    t.regex(err.rawMessage, why);
    t.regex(err.httpHeaders["www-authenticate"], /^Bearer realm="protomesh", error="invalid_token"/);
  });
}

test("auth: algorithm confusion (HS256 signed with the RSA public key) is refused", async (t) => {
  const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = publicKey.export({ type: "spki", format: "pem" }).toString();
  const rsaAuth = createAuthenticator({ publicKeyPem: pem, issuer: jwt.issuer, audience: jwt.audience });
  const forged = await new SignJWT({ role: "admin" })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject("u1")
    .setIssuer(jwt.issuer)
    .setAudience(jwt.audience)
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(pem));
  const e = await t.throwsAsync(rsaAuth.authenticate(`Bearer ${forged}`));
  t.regex((e as EdgeError).rawMessage, /algorithm/);
});

test("authorize: none / user / admin", (t) => {
  const p = { timeoutMs: undefined, idempotent: false, rateLimit: undefined };
  t.notThrows(() => authorize({ ...p, auth: "none" }, undefined));
  t.is((t.throws(() => authorize({ ...p, auth: "user" }, undefined)) as EdgeError).httpStatus, 401);
  t.notThrows(() => authorize({ ...p, auth: "user" }, { userId: "u", role: "user" }));
  const e = t.throws(() => authorize({ ...p, auth: "admin" }, { userId: "u", role: "user" })) as EdgeError;
  t.is(e.httpStatus, 403);
  t.is(e.code, Code.PermissionDenied);
});

test("timeouts: grpc-timeout parsing and the cap", (t) => {
  t.is(parseGrpcTimeout("250m"), 250);
  t.is(parseGrpcTimeout("2S"), 2000);
  t.is(parseGrpcTimeout("1H"), 3_600_000);
  t.is(parseGrpcTimeout("x"), undefined);
  t.is(formatGrpcTimeout(1500), "1500m");
  t.is(effectiveTimeout(2000, 500, 10_000), 500, "a shorter client deadline wins");
  t.is(effectiveTimeout(2000, 60_000, 10_000), 2000, "a longer one is capped");
  t.is(effectiveTimeout(undefined, undefined, 10_000), 10_000);
  t.is(effectiveTimeout(undefined, undefined, undefined), undefined);
});

test("retry: only idempotent, only UNAVAILABLE, within the budget", async (t) => {
  const unavailable = () => Promise.reject(new ConnectError("down", Code.Unavailable));
  let calls = 0;
  await t.throwsAsync(withRetries(() => (calls++, unavailable()), { idempotent: false, budget: new RetryBudget(), deadline: undefined }));
  t.is(calls, 1);
  calls = 0;
  await t.throwsAsync(withRetries(() => (calls++, unavailable()), { idempotent: true, budget: new RetryBudget(), deadline: undefined, baseDelayMs: 1 }));
  t.is(calls, 3);
  calls = 0;
  const notFound = () => Promise.reject(new ConnectError("nope", Code.NotFound));
  await t.throwsAsync(withRetries(() => (calls++, notFound()), { idempotent: true, budget: new RetryBudget(), deadline: undefined }));
  t.is(calls, 1);
  // An exhausted budget: 1000 failing calls make at most 20 % + reserve retries.
  const budget = new RetryBudget(0.2, 10);
  calls = 0;
  for (let i = 0; i < 1000; i++) {
    await withRetries(() => (calls++, unavailable()), { idempotent: true, budget, deadline: undefined, baseDelayMs: 0, maxDelayMs: 0 }).catch(() => {});
  }
  t.true(calls - 1000 <= 0.2 * 1000 + 10 + 1, `retries: ${calls - 1000}`);
});

test("breaker: client errors never open it; upstream failures do; open fails fast with 503", async (t) => {
  const breakers = new Breakers();
  const b = breakers.get("x", { windowMs: 10_000, minRequests: 4, errorPercent: 50, openForMs: 60_000, halfOpenProbes: 1 });
  for (let i = 0; i < 20; i++) {
    await throughBreaker(b, "x", 60, () => Promise.reject(new ConnectError("bad", Code.InvalidArgument))).catch(() => {});
  }
  t.is(breakers.state("x"), "closed");
  for (let i = 0; i < 20; i++) {
    await throughBreaker(b, "x", 60, () => Promise.reject(new ConnectError("down", Code.Unavailable))).catch(() => {});
  }
  t.is(breakers.state("x"), "open");
  const e = await t.throwsAsync(throughBreaker(b, "x", 60, () => Promise.resolve(1)));
  t.is((e as EdgeError).httpStatus, 503);
  t.is((e as EdgeError).httpHeaders["retry-after"], "60");
});

test("CORS: preflight for an allowed origin, 403 for others", (t) => {
  const s = { allowedOrigins: ["https://shop.example"] };
  const ok = preflight(s, "https://shop.example");
  t.is(ok.status, 204);
  t.regex(ok.headers["access-control-allow-headers"], /Connect-Protocol-Version/);
  t.regex(ok.headers["access-control-allow-headers"], /Authorization/);
  t.regex(ok.headers["access-control-allow-methods"], /POST/);
  t.is(preflight(s, "https://evil.example").status, 403);
  t.regex(corsResponseHeaders(s, "https://shop.example")["access-control-expose-headers"], /Grpc-Status/);
  t.is(ok.headers["access-control-allow-credentials"], "true", "a named origin may send credentials");
});

test("CORS: \"*\" lets any origin in without credentials; an origin also named keeps them", (t) => {
  const any = { allowedOrigins: ["*", "https://shop.example"] };
  for (const h of [preflight(any, "https://elsewhere.example").headers, corsResponseHeaders(any, "https://elsewhere.example")]) {
    t.is(h["access-control-allow-origin"], "https://elsewhere.example");
    t.false("access-control-allow-credentials" in h);
  }
  t.is(corsResponseHeaders(any, "https://shop.example")["access-control-allow-credentials"], "true");
});

test("config: overrides and precise errors", (t) => {
  const m = describeService(EchoService).methods.find((x) => x.method.name === "Limited")!;
  const c = parseConfig({ methods: { "protomesh.testing.v1.EchoService/Limited": { rateLimit: { requests: 2 }, auth: "user" } } });
  const p = effectivePolicy(m, c);
  t.is(p.auth, "user");
  t.deepEqual(p.rateLimit, { requests: 2, periodMs: 1000, burst: 2, key: "ip" });
  t.throws(() => parseConfig({ nope: 1 }), { message: /unknown config key "nope"/ });
  t.throws(() => parseConfig({ limits: { maxBodyBytes: -1 } }), { message: /limits.maxBodyBytes/ });
  t.throws(() => parseConfig({ methods: { "x/y": { auth: "root" } } }), { message: /auth/ });
});

test("config: a method-level breaker is its own, others share the upstream's", async (t) => {
  const { effectiveBreaker } = await import("../config.js");
  const svc = describeService(EchoService);
  const fail = svc.methods.find((x) => x.method.name === "Fail")!;
  const echo = svc.methods.find((x) => x.method.name === "Echo")!;
  const c = parseConfig({
    methods: { "protomesh.testing.v1.EchoService/Fail": { breaker: { minRequests: 2 } } },
    services: { echo: { breaker: { errorPercent: 30 } } },
  });
  const own = effectiveBreaker(fail, svc.breaker, c);
  t.is(own.name, "echo/protomesh.testing.v1.EchoService/Fail");
  t.is(own.spec.minRequests, 2);
  t.is(own.spec.errorPercent, 30);
  const shared = effectiveBreaker(echo, svc.breaker, c);
  t.is(shared.name, "echo");
  t.is(shared.spec.minRequests, 4, "from echo.proto's service option");
  t.is(shared.spec.openForMs, 1000);
});
