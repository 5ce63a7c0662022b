// Pure mapping tables and detail helpers.
import test from "ava";
import { Code, ConnectError } from "@connectrpc/connect";
import { status } from "@grpc/grpc-js";
import { RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import {
  codeFromGrpcStatus,
  codeJsonName,
  codeName,
  decodeStatusDetails,
  encodeStatusDetails,
  fieldViolations,
  grpcStatusFromCode,
  httpStatusFromCode,
  invalidArgument,
  invalidArguments,
  toConnectError,
  unavailable,
} from "./errors.js";

test("HTTP statuses follow the Connect / grpc-gateway table", (t) => {
  const table: [Code, number][] = [
    [Code.InvalidArgument, 400],
    [Code.Unauthenticated, 401],
    [Code.PermissionDenied, 403],
    [Code.NotFound, 404],
    [Code.AlreadyExists, 409],
    [Code.Aborted, 409],
    [Code.FailedPrecondition, 400],
    [Code.ResourceExhausted, 429],
    [Code.Canceled, 499],
    [Code.Unimplemented, 501],
    [Code.Unavailable, 503],
    [Code.DeadlineExceeded, 504],
    [Code.Internal, 500],
    [Code.Unknown, 500],
    [Code.DataLoss, 500],
  ];
  for (const [code, http] of table) t.is(httpStatusFromCode(code), http, codeName(code));
});

test("codes and gRPC statuses map 1:1, names as gRPC and Connect spell them", (t) => {
  t.is(grpcStatusFromCode(Code.InvalidArgument), status.INVALID_ARGUMENT);
  t.is(grpcStatusFromCode(Code.Unauthenticated), status.UNAUTHENTICATED);
  t.is(codeFromGrpcStatus(status.DEADLINE_EXCEEDED), Code.DeadlineExceeded);
  t.is(codeFromGrpcStatus(99), Code.Unknown);
  t.is(codeName(Code.InvalidArgument), "INVALID_ARGUMENT");
  t.is(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
  t.is(codeJsonName(Code.PermissionDenied), "permission_denied");
});

test("invalidArgument names the field and carries a BadRequest", (t) => {
  const err = invalidArgument("product.price", "must be positive", "RANGE");
  t.is(err.code, Code.InvalidArgument);
  t.is(err.rawMessage, "product.price: must be positive");
  t.deepEqual(fieldViolations(err), [{ field: "product.price", description: "must be positive", reason: "RANGE" }]);
  const many = invalidArguments([
    { field: "a", description: "x" },
    { field: "b", description: "y" },
  ]);
  t.is(many.rawMessage, "a: x (and 1 more)");
  t.is(fieldViolations(many).length, 2);
});

test("details survive an encode/decode round trip as on the wire", (t) => {
  const bin = encodeStatusDetails(unavailable("busy", 1500));
  t.truthy(bin);
  const back = decodeStatusDetails(bin, Code.Unavailable, "busy");
  t.is(back.findDetails(RetryInfoSchema)[0]?.retryDelay?.seconds, 1n);
  t.is(back.findDetails(RetryInfoSchema)[0]?.retryDelay?.nanos, 500_000_000);
  t.is(encodeStatusDetails(new ConnectError("plain", Code.NotFound)), undefined);
  // Corrupt details do not hide the status.
  t.is(decodeStatusDetails(new Uint8Array([0xff, 0xff]), Code.NotFound, "x").code, Code.NotFound);
});

test("non-Connect errors become INTERNAL without their message", (t) => {
  const err = toConnectError(new Error("password=hunter2"));
  t.is(err.code, Code.Internal);
  t.false(err.message.includes("hunter2"));
  const ce = new ConnectError("kept", Code.NotFound);
  t.is(toConnectError(ce), ce);
});
