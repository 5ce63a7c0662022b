// The lazy handler context behaves like Connect's: a signal read late still
// reports what happened before it was read.
import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError } from "@connectrpc/connect";
import { CatalogService } from "../gen/shop/catalog/v1/catalog_pb.js";
import { MeshHandlerContext } from "./handler-context.js";

const method = CatalogService.method.getProduct;
const md = () => {
  const m = new grpc.Metadata();
  m.set("x-request-id", "r1");
  m.set("trace-bin", Buffer.from([1, 2, 3]));
  return m;
};

test("request headers come from metadata, binary values as base64", (t) => {
  const ctx = new MeshHandlerContext(method, md(), undefined);
  t.is(ctx.requestHeader.get("x-request-id"), "r1");
  t.is(ctx.requestHeader.get("trace-bin"), Buffer.from([1, 2, 3]).toString("base64"));
  t.is(ctx.timeoutMs(), undefined);
  t.is(ctx.url, "/shop.catalog.v1.CatalogService/GetProduct");
  t.is(ctx.service, CatalogService);
});

test("a deadline that passed before the signal was read shows as DEADLINE_EXCEEDED", (t) => {
  const ctx = new MeshHandlerContext(method, md(), Date.now() - 1);
  t.is(ctx.timeoutMs(), 0);
  t.true(ctx.signal.aborted);
  t.is(ConnectError.from(ctx.signal.reason).code, Code.DeadlineExceeded);
});

test("a deadline fires the signal once it is read", async (t) => {
  const ctx = new MeshHandlerContext(method, md(), Date.now() + 30);
  const signal = ctx.signal;
  t.false(signal.aborted);
  await new Promise((r) => setTimeout(r, 60));
  t.true(signal.aborted);
  t.is(ConnectError.from(signal.reason).code, Code.DeadlineExceeded);
});

test("abort before the signal is read is kept; the first reason wins", (t) => {
  const ctx = new MeshHandlerContext(method, md(), undefined);
  ctx.abort(new ConnectError("client went away", Code.Canceled));
  ctx.abort(new ConnectError("later", Code.Internal));
  t.true(ctx.isAborted);
  t.is(ConnectError.from(ctx.signal.reason).rawMessage, "client went away");
});

test("the shutdown signal reaches the handler signal", (t) => {
  const shutdown = new AbortController();
  const ctx = new MeshHandlerContext(method, md(), undefined, shutdown.signal);
  const signal = ctx.signal;
  shutdown.abort(new ConnectError("server shutting down", Code.Unavailable));
  t.true(signal.aborted);
  t.is(ConnectError.from(signal.reason).code, Code.Unavailable);
});

test("response headers exist only once touched; the plain object shares them", (t) => {
  const ctx = new MeshHandlerContext(method, md(), undefined);
  t.is(ctx.touchedResponseHeader, undefined);
  const plain = ctx.toPlainObject();
  plain.responseHeader.set("a", "1");
  t.is(ctx.touchedResponseHeader?.get("a"), "1");
  t.is(plain.signal, ctx.signal);
});
