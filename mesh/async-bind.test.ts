// mesh's AsyncResource.prototype.bind (async-bind.ts) behaves like Node's.
import test from "ava";
import { AsyncLocalStorage, AsyncResource, executionAsyncId } from "node:async_hooks";
import { asyncBindPatched } from "./async-bind.js";

test("a bound function runs in the resource's async scope, with its this, arguments and length", (t) => {
  t.log(`patched: ${asyncBindPatched} (Node ${process.versions.node})`);
  const als = new AsyncLocalStorage<string>();
  const resource = als.run("at bind", () => new AsyncResource("Test"));
  const bound = resource.bind(function (this: unknown, a: number, b: number) {
    return { self: this, sum: a + b, store: als.getStore(), id: executionAsyncId() };
  });
  const obj = { bound };
  const r = als.run("at call", () => obj.bound(1, 2));
  t.is(r.self, obj);
  t.is(r.sum, 3);
  t.is(r.store, "at bind");
  t.is(r.id, resource.asyncId());
  t.is(bound.length, 2);

  // thisArg is in Node's API, not in @types/node.
  const bindWithThis = resource.bind.bind(resource) as unknown as (fn: unknown, thisArg: unknown) => (x: number) => number;
  const withThis = bindWithThis(function (this: { k: number }, x: number) {
    return x * this.k;
  }, { k: 2 });
  t.is(withThis(21), 42);
});

test("the deprecated asyncResource property still reads and writes", (t) => {
  const resource = new AsyncResource("Test");
  const bound = resource.bind(() => 1) as unknown as { asyncResource: AsyncResource };
  const other = new AsyncResource("Other");
  t.is(bound.asyncResource, resource);
  bound.asyncResource = other;
  t.is(bound.asyncResource, other);
  t.throws(() => resource.bind(42 as unknown as () => void), { code: "ERR_INVALID_ARG_TYPE" });
});
