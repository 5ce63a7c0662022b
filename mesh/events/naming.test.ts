import test from "ava";
import { backoffDelay } from "./backoff.js";
import { headerValue } from "./headers.js";
import {
  assertDurableName,
  deadLetterStream,
  eventSubject,
  normalizeSubjectPrefix,
  packageStream,
  streamForType,
  streamPrefix,
} from "./naming.js";

test("subjects are the full type name behind the prefix", (t) => {
  t.is(eventSubject("shop.order.v1.OrderPlaced"), "shop.order.v1.OrderPlaced");
  t.is(eventSubject("shop.order.v1.OrderPlaced", "t_1."), "t_1.shop.order.v1.OrderPlaced");
});

test("one stream per package, named without its version", (t) => {
  t.deepEqual(streamForType("shop.order.v1.OrderPlaced"), { name: "SHOP_ORDER", subjects: ["shop.order.v1.>"] });
  t.deepEqual(packageStream("shop.order.v1", "t_k3x9_a1b2."), { name: "T_K3X9_A1B2_SHOP_ORDER", subjects: ["t_k3x9_a1b2.shop.order.v1.>"] });
  t.deepEqual(packageStream("acme.billing.v2beta1"), { name: "ACME_BILLING", subjects: ["acme.billing.v2beta1.>"] });
  t.throws(() => streamForType("Orphan"), { message: /has no package/ });
});

test("the dead-letter stream follows the prefix", (t) => {
  t.deepEqual(deadLetterStream(), { name: "DEAD_LETTERS", subjects: ["deadletter.>"] });
  t.deepEqual(deadLetterStream("t_x."), { name: "T_X_DEAD_LETTERS", subjects: ["t_x.deadletter.>"] });
});

test("prefixes are normalised and validated", (t) => {
  t.is(normalizeSubjectPrefix(""), "");
  t.is(normalizeSubjectPrefix("dev"), "dev.");
  t.is(streamPrefix("t_k3x9_a1b2."), "T_K3X9_A1B2_");
  t.throws(() => normalizeSubjectPrefix("a.*"), { message: /wildcard/ });
});

test("durable names are checked", (t) => {
  t.notThrows(() => assertDurableName("user-award-points"));
  t.throws(() => assertDurableName("user.award"), { message: /consumer name "user.award"/ });
});

test("backoff grows, is capped and spreads", (t) => {
  const mid = () => 0.5; // no jitter
  t.deepEqual([1, 2, 3, 4].map((n) => backoffDelay(n, { initialMs: 100 }, mid)), [100, 200, 400, 800]);
  t.is(backoffDelay(30, { initialMs: 100, maxMs: 5000 }, mid), 5000);
  t.is(backoffDelay(1, { initialMs: 100, jitter: 0.2 }, () => 0), 80);
  t.is(backoffDelay(1, { initialMs: 100, jitter: 0.2 }, () => 1), 120);
});

test("header values are one bounded line", (t) => {
  t.is(headerValue("a\r\nb\nc"), "a b c");
  t.is(headerValue("x".repeat(2000), 10).length, 10);
});
