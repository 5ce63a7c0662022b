// Reading the caller from request metadata.
import test from "ava";
import { Code, ConnectError, createHandlerContext } from "@connectrpc/connect";
import { CatalogService } from "../gen/shop/catalog/v1/catalog_pb.js";
import { callerOf, identityHeaders, requireAdmin, requireUser } from "./identity.js";

const ctx = (requestHeader: Record<string, string>) =>
  createHandlerContext({
    service: CatalogService,
    method: CatalogService.method.createProduct,
    protocolName: "grpc",
    requestMethod: "POST",
    url: "/shop.catalog.v1.CatalogService/CreateProduct",
    requestHeader,
  });

test("anonymous calls have no caller and fail requireUser with UNAUTHENTICATED", (t) => {
  t.is(callerOf(ctx({})), undefined);
  const err = t.throws(() => requireUser(ctx({})));
  t.is(ConnectError.from(err).code, Code.Unauthenticated);
  t.is(ConnectError.from(t.throws(() => requireAdmin(ctx({ "x-mesh-user-id": " " })))).code, Code.Unauthenticated);
});

test("users pass requireUser but not requireAdmin", (t) => {
  const c = ctx(identityHeaders({ userId: "u1", role: "user" }));
  t.deepEqual(requireUser(c), { userId: "u1", role: "user" });
  t.is(ConnectError.from(t.throws(() => requireAdmin(c))).code, Code.PermissionDenied);
  // An unknown role is only a user.
  t.is(ConnectError.from(t.throws(() => requireAdmin(ctx({ "x-mesh-user-id": "u2", "x-mesh-user-role": "root" })))).code, Code.PermissionDenied);
});

test("admins pass requireAdmin", (t) => {
  t.deepEqual(requireAdmin(ctx(identityHeaders({ userId: "a1", role: "admin" }))), { userId: "a1", role: "admin" });
});
