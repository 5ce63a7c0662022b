// Node 20's AsyncResource.prototype.bind builds two util.deprecate wrappers
// (for the deprecated `asyncResource` property, DEP0172) on every call, and
// ClientHttp2Session.request binds once per request: every grpc-js client call
// (mesh/client) and every gateway upstream request. In the gateway's profile
// that was ~7 % of busy time on the gRPC fast path (~20 us per call; a
// microbenchmark: 29-40 us per bind, against 2-5 us for the version below); on a
// mesh unary call, client and server in one process, 8.0 % of main-thread CPU
// (alternating 300 ms slices, Node's bind vs this one; in-process A/B).
// This replaces it, once per process (mesh/client and the gateway import it),
// with the same behaviour (runs fn in the resource's async scope, keeps `length`,
// keeps the `asyncResource` accessor and its DEP0172 warning) built from one
// shared getter/setter pair. Installed only where bind is that per-call version.
import { AsyncResource } from "node:async_hooks";
import { deprecate } from "node:util";

const original = AsyncResource.prototype.bind;
const resourceOf = Symbol("asyncResource");
const message = "The asyncResource property on bound functions is deprecated";
type Bound = ((...args: unknown[]) => unknown) & { [resourceOf]?: AsyncResource };

const accessor = {
  configurable: true,
  enumerable: true,
  get: deprecate(function (this: Bound) {
    return this[resourceOf];
  }, message, "DEP0172"),
  set: deprecate(function (this: Bound, v: AsyncResource) {
    this[resourceOf] = v;
  }, message, "DEP0172"),
};

type Fn = (...args: unknown[]) => unknown;

function bind(this: AsyncResource, fn: Fn, thisArg?: unknown): Fn {
  // Not a function: the original's validation error.
  if (typeof fn !== "function") return (original as (this: AsyncResource, f: Fn, t?: unknown) => Fn).call(this, fn, thisArg);
  const resource = this;
  const bound: Bound =
    thisArg === undefined
      ? function (this: unknown, ...args: unknown[]) {
          return resource.runInAsyncScope(fn, this, ...args);
        }
      : resource.runInAsyncScope.bind(resource, fn, thisArg);
  Object.defineProperty(bound, "length", { configurable: true, enumerable: false, value: fn.length, writable: false });
  bound[resourceOf] = resource;
  Object.defineProperty(bound, "asyncResource", accessor);
  return bound;
}

/** True when the per-call-deprecate bind was replaced (Node 20). */
export const asyncBindPatched = String(original).includes("DEP0172") && String(original).includes("deprecate(");
if (asyncBindPatched) AsyncResource.prototype.bind = bind as unknown as typeof original;
